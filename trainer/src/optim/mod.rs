//! AdamW with decoupled weight decay, a linear warmup/decay schedule and global-norm gradient
//! clipping. Written here rather than using tch's optimizer so its moments can be saved and
//! restored for resumable training.
//!
//! Gradients are computed fresh each step (`backward` asks autograd for them, as PyTorch's
//! `zero_grad(set_to_none=True)` arranges): no zeroing pass and no accumulation into `.grad`.
//!
//! On the CPU, when every parameter, gradient and moment is a contiguous fp32 tensor, the step is
//! one fused pass over memory (read p, g, m, v; write p, m, v) split across the intra-op
//! threads, and the gradient norm another; clipping does not rewrite the gradients but hands its
//! coefficient to the update pass. The tensor-op version makes about ten passes with
//! temporaries; the kernels are in `cpu`.
//!
//! Elsewhere (CUDA) the parameters and moments live in one flat buffer each (every parameter's
//! data becomes a view into it) and the gradients are packed into one per step, so clipping and
//! the update are about a dozen kernel launches in all instead of ten per parameter, with no
//! device-to-host sync: small models on a GPU are bound by launches, not arithmetic.
mod cpu;

use tch::{Device, Kind, Tensor};

use self::cpu::{for_chunks, Buffer, UpdateScalars};
use crate::resume::StateError;

/// How the parameters are laid out in memory (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// Flat buffers off the CPU, separate tensors (fused pass) on it.
    Auto,
    /// Each parameter its own tensor.
    PerTensor,
    /// One flat buffer each for parameters, gradients and moments.
    Flat,
}

/// The flat buffers of `Layout::Flat`: parameters with weight decay first, so decay is one slice.
struct FlatBuffers {
    params: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Elements of the parameters that get weight decay (the first ones).
    decay_len: i64,
    /// Parameter indices in flat order.
    order: Vec<usize>,
    /// The packed gradients of the last `backward` (None when a parameter had none).
    grads: Option<Tensor>,
}

/// The scalars of one AdamW step.
#[derive(Clone, Copy)]
struct StepScalars {
    beta1: f64,
    beta2: f64,
    eps: f64,
    lr: f64,
    /// Bias corrections 1 - beta^t.
    bc1: f64,
    bc2: f64,
}

impl StepScalars {
    /// Moments, then the parameter, with tensor ops on any device (one parameter, or the flat
    /// buffers at once). Weight decay is the caller's, applied first: the moments do not read `p`.
    fn apply(&self, p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) {
        let (mut p, mut m, mut v) = (p.shallow_clone(), m.shallow_clone(), v.shallow_clone());
        let _ = m.lerp_(g, 1.0 - self.beta1);
        let _ = v.g_mul_scalar_(self.beta2);
        let _ = v.addcmul_(&(g * (1.0 - self.beta2)), g);
        let mut denom = v.sqrt();
        let _ = denom.g_div_scalar_(self.bc2.sqrt());
        let _ = denom.g_add_scalar_(self.eps);
        let mut update = &m / &denom;
        let _ = update.g_mul_scalar_(self.lr / self.bc1);
        let _ = p.g_sub_(&update);
    }
}

pub struct AdamW {
    params: Vec<Tensor>,
    flat: Option<FlatBuffers>,
    /// Gradients of the last `backward`, one per parameter (undefined when it had none).
    grads: Vec<Tensor>,
    /// The clipping coefficient of the last `clip_grad_norm` on the fused CPU path, applied to
    /// the gradients inside the update pass instead of in a pass of its own.
    grad_scale: f32,
    decay: Vec<bool>,
    /// Each parameter's learning rate as a multiple of the scheduled one (layer-wise decay).
    lr_scale: Vec<f64>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: i64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// `params` with a flag saying whether each gets weight decay.
    #[cfg(test)]
    pub fn new(params: Vec<(Tensor, bool)>, weight_decay: f64) -> Self {
        Self::with_layout(params, weight_decay, Layout::Auto)
    }

    /// As `new`, choosing the memory layout. `Flat` needs fp32 parameters on one device (it falls
    /// back to `PerTensor` otherwise) and rebinds each parameter's data to a view of the buffer.
    #[cfg(test)]
    pub fn with_layout(params: Vec<(Tensor, bool)>, weight_decay: f64, layout: Layout) -> Self {
        let ones = vec![1.0; params.len()];
        Self::with_lr_scales(params, weight_decay, layout, ones)
    }

    /// As `with_layout`, each parameter's learning rate multiplied by its entry of `lr_scale`
    /// (same order; missing entries are 1). Scales other than 1 keep separate tensors: the flat
    /// update takes one learning rate.
    pub fn with_lr_scales(
        params: Vec<(Tensor, bool)>,
        weight_decay: f64,
        layout: Layout,
        mut lr_scale: Vec<f64>,
    ) -> Self {
        lr_scale.resize(params.len(), 1.0);
        let uniform = lr_scale.iter().all(|&s| s == 1.0);
        let (mut params, decay): (Vec<Tensor>, Vec<bool>) = params.into_iter().unzip();
        let device = params.first().map(Tensor::device);
        let flat_ok = !params.is_empty()
            && params
                .iter()
                .all(|p| p.kind() == Kind::Float && Some(p.device()) == device);
        let want_flat = uniform
            && match layout {
                Layout::Auto => device.is_some_and(|d| d != Device::Cpu),
                Layout::PerTensor => false,
                Layout::Flat => true,
            };
        let (flat, exp_avg, exp_avg_sq) = if want_flat && flat_ok {
            let (flat, m, v) = Self::pack(&mut params, &decay);
            (Some(flat), m, v)
        } else {
            let m = params.iter().map(Tensor::zeros_like).collect();
            let v = params.iter().map(Tensor::zeros_like).collect();
            (None, m, v)
        };
        Self {
            params,
            flat,
            grads: Vec::new(),
            grad_scale: 1.0,
            decay,
            lr_scale,
            exp_avg,
            exp_avg_sq,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// Copies the parameters into one flat buffer (decayed ones first) and rebinds each
    /// parameter's data to its slice; the moments are views of flat buffers in the same layout.
    fn pack(params: &mut [Tensor], decay: &[bool]) -> (FlatBuffers, Vec<Tensor>, Vec<Tensor>) {
        let mut order: Vec<usize> = (0..params.len()).collect();
        order.sort_by_key(|&i| !decay[i]);
        let total: i64 = params.iter().map(|p| p.numel() as i64).sum();
        let decay_len: i64 = order
            .iter()
            .filter(|&&i| decay[i])
            .map(|&i| params[i].numel() as i64)
            .sum();
        let options = (Kind::Float, params[0].device());
        let flat_params = Tensor::zeros([total], options);
        let flat_m = Tensor::zeros([total], options);
        let flat_v = Tensor::zeros([total], options);
        let mut m: Vec<Tensor> = (0..params.len()).map(|_| Tensor::new()).collect();
        let mut v: Vec<Tensor> = (0..params.len()).map(|_| Tensor::new()).collect();
        let mut offset = 0;
        tch::no_grad(|| {
            for &i in &order {
                let n = params[i].numel() as i64;
                let shape = params[i].size();
                let view = flat_params.narrow(0, offset, n).view(shape.as_slice());
                view.shallow_clone().copy_(&params[i]);
                params[i].set_data(&view);
                m[i] = flat_m.narrow(0, offset, n).view(shape.as_slice());
                v[i] = flat_v.narrow(0, offset, n).view(shape.as_slice());
                offset += n;
            }
        });
        let flat = FlatBuffers {
            params: flat_params,
            exp_avg: flat_m,
            exp_avg_sq: flat_v,
            decay_len,
            order,
            grads: None,
        };
        (flat, m, v)
    }

    /// Computes the gradients of `loss` with respect to the parameters (replacing the last ones).
    pub fn backward(&mut self, loss: &Tensor) {
        self.grads.clear();
        self.grad_scale = 1.0;
        self.grads = Tensor::run_backward(&[loss], &self.params, false, false);
        if let Some(flat) = &mut self.flat {
            // Packed only when every parameter has a gradient; otherwise the per-tensor ops run
            // (on views of the same buffers), skipping the parameters without one.
            let all = flat.order.iter().all(|&i| self.grads[i].defined());
            flat.grads = all.then(|| {
                let parts: Vec<Tensor> = flat
                    .order
                    .iter()
                    .map(|&i| self.grads[i].reshape([-1]))
                    .collect();
                Tensor::cat(&parts, 0)
            });
        }
    }

    /// Whether the last `backward` left packed gradients for the flat update.
    fn packed(&self) -> bool {
        self.flat.as_ref().is_some_and(|f| f.grads.is_some())
    }

    fn grad(&self, i: usize) -> Option<&Tensor> {
        self.grads.get(i).filter(|g| g.defined())
    }

    /// Raw views of (param, grad, exp_avg, exp_avg_sq) of the parameters that have a gradient,
    /// when all of those are contiguous fp32 CPU tensors.
    fn cpu_buffers(&self) -> Option<Vec<(usize, [Buffer; 4])>> {
        let with_grad: Vec<usize> = (0..self.params.len())
            .filter(|&i| self.grad(i).is_some())
            .collect();
        if with_grad.is_empty() {
            return None;
        }
        with_grad
            .into_iter()
            .map(|i| {
                let p = &self.params[i];
                Some((
                    i,
                    [
                        Buffer::of(p)?,
                        Buffer::of(self.grad(i)?)?,
                        Buffer::of(&self.exp_avg[i])?,
                        Buffer::of(&self.exp_avg_sq[i])?,
                    ],
                ))
            })
            .collect()
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before
    /// clipping, except with packed gradients, where reading it would stall the device.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Option<f64> {
        if let Some(g) = self.flat.as_ref().and_then(|f| f.grads.as_ref()) {
            tch::no_grad(|| {
                let coef = (g.norm() + 1e-6).reciprocal() * max_norm;
                let _ = g.shallow_clone().g_mul_(&coef.clamp_max(1.0));
            });
            return None;
        }
        if let Some(buffers) = self.cpu_buffers() {
            let lens: Vec<usize> = buffers.iter().map(|(_, b)| b[1].len).collect();
            let threads = tch::get_num_threads().max(1) as usize;
            let partial = for_chunks(&lens, threads, |i, start, end| {
                // SAFETY: in bounds; this pass only reads the gradients.
                cpu::sum_squares(unsafe { buffers[i].1[1].slice(start, end) })
            });
            let total = partial.iter().sum::<f64>().sqrt();
            // The fused update scales the gradients as it reads them.
            self.grad_scale = if total > max_norm {
                (max_norm / (total + 1e-6)) as f32
            } else {
                1.0
            };
            return Some(total);
        }
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .grads
                .iter()
                .filter(|g| g.defined())
                .map(|g| g.norm())
                .collect();
            if norms.is_empty() {
                return Some(0.0);
            }
            let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
            if total > max_norm {
                let coef = max_norm / (total + 1e-6);
                for g in &self.grads {
                    if g.defined() {
                        let _ = g.shallow_clone().g_mul_scalar_(coef);
                    }
                }
            }
            Some(total)
        })
    }

    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        if !self.packed() {
            if let Some(buffers) = self.cpu_buffers() {
                return self.fused_cpu_step(&buffers, lr, bc1, bc2);
            }
        }

        let scalars = StepScalars {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            lr,
            bc1,
            bc2,
        };
        let decay = 1.0 - lr * self.weight_decay;
        tch::no_grad(|| {
            if let Some(flat) = self.flat.as_mut() {
                if let Some(g) = flat.grads.take() {
                    if self.weight_decay > 0.0 && flat.decay_len > 0 {
                        let _ = flat
                            .params
                            .narrow(0, 0, flat.decay_len)
                            .g_mul_scalar_(decay);
                    }
                    scalars.apply(&flat.params, &g, &flat.exp_avg, &flat.exp_avg_sq);
                    return;
                }
            }
            for i in 0..self.params.len() {
                let Some(g) = self.grad(i) else {
                    continue;
                };
                let p = &self.params[i];
                let lr = lr * self.lr_scale[i];
                if self.decay[i] && self.weight_decay > 0.0 {
                    let _ = p
                        .shallow_clone()
                        .g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let scalars = StepScalars { lr, ..scalars };
                scalars.apply(p, g, &self.exp_avg[i], &self.exp_avg_sq[i]);
            }
        });
    }

    /// The same update as the tensor-op path (with the pending clipping coefficient), in one
    /// pass per element.
    fn fused_cpu_step(&self, buffers: &[(usize, [Buffer; 4])], lr: f64, bc1: f64, bc2: f64) {
        let lens: Vec<usize> = buffers.iter().map(|(_, b)| b[0].len).collect();
        let scalars = UpdateScalars {
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            step_size: (lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            eps: self.eps as f32,
            grad_scale: self.grad_scale,
        };
        let per_buffer: Vec<(f32, UpdateScalars)> = buffers
            .iter()
            .map(|&(param, _)| {
                let lr = lr * self.lr_scale[param];
                let decay = if self.decay[param] && self.weight_decay > 0.0 {
                    (1.0 - lr * self.weight_decay) as f32
                } else {
                    1.0
                };
                let step_size = (lr / bc1) as f32;
                (
                    decay,
                    UpdateScalars {
                        step_size,
                        ..scalars
                    },
                )
            })
            .collect();
        let threads = tch::get_num_threads().max(1) as usize;
        for_chunks(&lens, threads, |i, start, end| {
            let [p, g, m, v] = &buffers[i].1;
            // SAFETY: in bounds (all four share the parameter's length); each chunk of each
            // tensor is touched by one thread only.
            let (p, g, m, v) = unsafe {
                (
                    p.slice(start, end),
                    g.slice(start, end),
                    m.slice(start, end),
                    v.slice(start, end),
                )
            };
            let (decay, scalars) = per_buffer[i];
            cpu::update(p, g, m, v, decay, scalars);
        });
    }

    pub fn steps_taken(&self) -> i64 {
        self.step
    }

    /// Moments and step count, for resuming (`exp_avg.N`, `exp_avg_sq.N` in parameter order).
    pub fn state(&self) -> (i64, Vec<(String, Tensor)>) {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (m, v)) in self.exp_avg.iter().zip(&self.exp_avg_sq).enumerate() {
            out.push((format!("exp_avg.{i}"), m.shallow_clone()));
            out.push((format!("exp_avg_sq.{i}"), v.shallow_clone()));
        }
        (self.step, out)
    }

    /// Restores moments saved by `state`. They must match these parameters one for one, in count
    /// and shape (a state saved for another parameter set is refused, never half-applied).
    pub fn load_state(
        &mut self,
        step: i64,
        tensors: &[(String, Tensor)],
    ) -> Result<(), StateError> {
        if tensors.len() != 2 * self.params.len() {
            return Err(StateError::MomentMismatch(format!(
                "{} moment tensors for {} parameters (saved for another model or pooling?)",
                tensors.len(),
                self.params.len()
            )));
        }
        let find = |name: &str, like: &Tensor| {
            let t = tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| StateError::MissingMoment(name.to_string()))?;
            if t.size() != like.size() {
                return Err(StateError::MomentMismatch(format!(
                    "{name} has shape {:?}, its parameter {:?}",
                    t.size(),
                    like.size()
                )));
            }
            Ok(t.to_kind(Kind::Float))
        };
        let mut restored = Vec::with_capacity(self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            restored.push((
                find(&format!("exp_avg.{i}"), p)?,
                find(&format!("exp_avg_sq.{i}"), p)?,
            ));
        }
        tch::no_grad(|| {
            for (i, (m, v)) in restored.iter().enumerate() {
                self.exp_avg[i].shallow_clone().copy_(m);
                self.exp_avg_sq[i].shallow_clone().copy_(v);
            }
        });
        self.step = step;
        Ok(())
    }
}

/// Linear warmup from 0 to `peak` over `warmup` steps, then linear decay to 0 at `total`.
pub fn linear_schedule(step: u64, warmup: u64, total: u64, peak: f64) -> f64 {
    if warmup > 0 && step < warmup {
        peak * (step + 1) as f64 / warmup as f64
    } else if total <= warmup {
        peak
    } else {
        peak * (total.saturating_sub(step)) as f64 / (total - warmup) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((linear_schedule(0, 10, 100, 1.0) - 0.1).abs() < 1e-12);
        assert!((linear_schedule(9, 10, 100, 1.0) - 1.0).abs() < 1e-12);
        assert!((linear_schedule(10, 10, 100, 1.0) - 1.0).abs() < 1e-12);
        assert!((linear_schedule(55, 10, 100, 1.0) - 0.5).abs() < 1e-12);
        assert_eq!(linear_schedule(100, 10, 100, 1.0), 0.0);
    }

    #[test]
    fn adamw_matches_the_closed_form_first_step() {
        // After one step Adam moves each weight by lr * sign(grad) (bias-corrected m/sqrt(v) = ±1).
        let w = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![(w.shallow_clone(), true)], 0.1);
        let loss = (&w * Tensor::from_slice(&[3.0f32, -0.5])).sum(Kind::Float);
        opt.backward(&loss);
        opt.step(0.01);
        let got: Vec<f32> = Vec::try_from(w.detach()).unwrap();
        // decay first: w * (1 - 0.01*0.1), then -0.01 * sign(grad)
        let expect = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        for (g, e) in got.iter().zip(expect) {
            assert!((*g as f64 - e).abs() < 1e-6, "{got:?} vs {expect:?}");
        }
    }

    #[test]
    fn learning_rate_scales_apply_per_parameter_on_both_paths() {
        // First step: each weight moves by its own lr * sign(grad), decay included. All
        // contiguous: the fused pass; one transposed (not contiguous): the tensor-op path.
        for (layout, transposed) in [
            (Layout::Auto, false),
            (Layout::Auto, true),
            (Layout::Flat, false),
        ] {
            let a = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
            let b = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
            let b = if transposed { b.tr() } else { b }.set_requires_grad(true);
            let b_before: Vec<f32> = Vec::try_from(b.detach().reshape([-1])).unwrap();
            let mut opt = AdamW::with_lr_scales(
                vec![(a.shallow_clone(), true), (b.shallow_clone(), true)],
                0.1,
                layout,
                vec![0.5, 0.25],
            );
            assert!(opt.flat.is_none(), "scaled rates keep separate tensors");
            let loss = a.sum(Kind::Float) + b.sum(Kind::Float);
            opt.backward(&loss);
            opt.step(0.01);
            let moved = |t: &Tensor, before: &[f32], lr: f64| {
                let got: Vec<f32> = Vec::try_from(t.detach().reshape([-1])).unwrap();
                for (g, x) in got.iter().zip(before) {
                    let expect = *x as f64 * (1.0 - lr * 0.1) - lr;
                    assert!((*g as f64 - expect).abs() < 1e-6, "{got:?} (lr {lr})");
                }
            };
            moved(&a, &[1.0, -2.0], 0.005);
            moved(&b, &b_before, 0.0025);
        }
    }

    /// A non-contiguous parameter takes the tensor-op path: both paths must agree.
    #[test]
    fn fused_cpu_step_matches_the_tensor_op_step() {
        tch::manual_seed(3);
        let a = Tensor::randn([64, 48], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let storage = Tensor::zeros([48, 64], (Kind::Float, Device::Cpu));
        let b = storage.transpose(0, 1);
        tch::no_grad(|| b.shallow_clone().copy_(&a));
        let b = b.set_requires_grad(true);
        assert!(!b.is_contiguous());
        let target = Tensor::randn([64, 48], (Kind::Float, Device::Cpu));
        let mut runs = Vec::new();
        for (w, fused) in [(&a, true), (&b, false)] {
            let mut opt = AdamW::new(vec![(w.shallow_clone(), true)], 0.01);
            for step in 0..5 {
                let loss = (w - &target).pow_tensor_scalar(2).sum(Kind::Float);
                opt.backward(&loss);
                assert_eq!(opt.cpu_buffers().is_some(), fused);
                opt.clip_grad_norm(5.0);
                opt.step(1e-2 * (step + 1) as f64);
            }
            runs.push(w.detach().contiguous());
        }
        let diff = (&runs[0] - &runs[1]).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "fused and tensor-op AdamW differ by {diff}");
    }

    /// Clipping must reach the update on both paths: the fused CPU pass applies the coefficient
    /// as it reads the gradient (the first moment shows it), the tensor-op path scales the
    /// gradients themselves.
    #[test]
    fn clipping_bounds_the_global_norm() {
        let storage = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
        for contiguous in [true, false] {
            let w = if contiguous {
                Tensor::from_slice(&[0.0f32, 0.0])
            } else {
                storage.select(1, 0)
            }
            .set_requires_grad(true);
            let mut opt = AdamW::new(vec![(w.shallow_clone(), false)], 0.0);
            opt.backward(&(&w * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float));
            assert_eq!(opt.cpu_buffers().is_some(), contiguous);
            let before = opt
                .clip_grad_norm(1.0)
                .expect("the CPU paths report the norm");
            assert!((before - 5.0).abs() < 1e-6);
            opt.step(0.01);
            // m = (1 - beta1) * clipped gradient = 0.1 * [0.6, 0.8]
            let m: Vec<f32> = Vec::try_from(&opt.state().1[0].1.contiguous()).unwrap();
            for (got, want) in m.iter().zip([0.06f32, 0.08]) {
                assert!(
                    (got - want).abs() < 1e-6,
                    "contiguous {contiguous}: m {m:?}"
                );
            }
        }
    }

    /// The flat layout (what CUDA uses) must give the same parameters as the fused CPU pass,
    /// through the caller's own handles (the parameters are rebound to views of the buffer),
    /// with clipping active and one parameter decayed and one not.
    #[test]
    fn flat_layout_matches_the_fused_step_through_the_callers_handles() {
        tch::manual_seed(5);
        let init_a = Tensor::randn([32, 24], (Kind::Float, Device::Cpu));
        let init_b = Tensor::randn([24], (Kind::Float, Device::Cpu));
        let target = Tensor::randn([32, 24], (Kind::Float, Device::Cpu));
        let mut runs = Vec::new();
        for layout in [Layout::PerTensor, Layout::Flat] {
            let a = init_a.copy().set_requires_grad(true);
            let b = init_b.copy().set_requires_grad(true);
            let mut opt = AdamW::with_layout(
                vec![(b.shallow_clone(), false), (a.shallow_clone(), true)],
                0.1,
                layout,
            );
            for step in 0..4 {
                let loss = (&a * &b - &target).pow_tensor_scalar(2).sum(Kind::Float);
                opt.backward(&loss);
                assert_eq!(opt.packed(), layout == Layout::Flat);
                opt.clip_grad_norm(2.0);
                opt.step(1e-2 * (step + 1) as f64);
            }
            assert!(
                (&a - &init_a).abs().max().double_value(&[]) > 1e-3,
                "a did not move"
            );
            let (steps, state) = opt.state();
            assert_eq!(steps, 4);
            runs.push((a.detach().copy(), b.detach().copy(), state));
        }
        let diff = |x: &Tensor, y: &Tensor| (x - y).abs().max().double_value(&[]);
        assert!(diff(&runs[0].0, &runs[1].0) < 1e-5);
        assert!(diff(&runs[0].1, &runs[1].1) < 1e-5);
        for ((n0, t0), (n1, t1)) in runs[0].2.iter().zip(&runs[1].2) {
            assert_eq!(n0, n1);
            assert!(diff(t0, t1) < 1e-5, "moment {n0} differs");
        }
    }

    /// A state saved for another parameter set (count or shape) is refused before anything changes.
    #[test]
    fn moments_for_other_parameters_are_refused() {
        let a = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[3.0f32]).set_requires_grad(true);
        let two = AdamW::new(
            vec![(a.shallow_clone(), true), (b.shallow_clone(), true)],
            0.0,
        );
        let (_, saved) = two.state();
        let mut one = AdamW::new(vec![(a.shallow_clone(), true)], 0.0);
        let err = one.load_state(3, &saved).unwrap_err().to_string();
        assert!(err.contains("4 moment tensors for 1 parameters"), "{err}");
        let swapped = AdamW::new(
            vec![(b.shallow_clone(), true), (a.shallow_clone(), true)],
            0.0,
        );
        let mut target = AdamW::new(
            vec![(a.shallow_clone(), true), (b.shallow_clone(), true)],
            0.0,
        );
        let err = target
            .load_state(3, &swapped.state().1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exp_avg.0 has shape [1]"), "{err}");
        assert_eq!(
            target.steps_taken(),
            0,
            "a refused state must change nothing"
        );
    }

    /// Moments restored into the flat layout land in its buffers (the next step uses them), and
    /// a parameter without a gradient falls back to the per-tensor ops and is left alone.
    #[test]
    fn flat_layout_restores_moments_and_skips_parameters_without_gradients() {
        let used = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let unused = Tensor::from_slice(&[7.0f32]).set_requires_grad(true);
        let mut opt = AdamW::with_layout(
            vec![(used.shallow_clone(), true), (unused.shallow_clone(), true)],
            0.0,
            Layout::Flat,
        );
        let state = vec![
            ("exp_avg.0".to_string(), Tensor::from_slice(&[0.5f32, 0.5])),
            (
                "exp_avg_sq.0".to_string(),
                Tensor::from_slice(&[0.25f32, 0.25]),
            ),
            ("exp_avg.1".to_string(), Tensor::from_slice(&[0.0f32])),
            ("exp_avg_sq.1".to_string(), Tensor::from_slice(&[0.0f32])),
        ];
        opt.load_state(10, &state).unwrap();
        let flat_m: Vec<f32> = Vec::try_from(&opt.flat.as_ref().unwrap().exp_avg).unwrap();
        assert_eq!(
            &flat_m[..2],
            &[0.5, 0.5],
            "restored moments must be in the flat buffer"
        );
        opt.backward(&(&used * 1.0).sum(Kind::Float));
        assert!(
            !opt.packed(),
            "a missing gradient must disable the packed update"
        );
        opt.step(0.1);
        assert_eq!(Vec::<f32>::try_from(&unused.detach()).unwrap(), vec![7.0]);
        let moved: Vec<f32> = Vec::try_from(&used.detach()).unwrap();
        assert!(moved[0] < 1.0 && moved[1] < 2.0, "{moved:?}");
    }
}
