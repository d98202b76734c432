//! AdamW with decoupled weight decay, a linear warmup/decay schedule and global-norm gradient
//! clipping. Written here rather than using tch's optimizer so its moments can be saved and
//! restored for resumable training.
//!
//! Gradients are computed fresh each step (`backward` asks autograd for them, as PyTorch's
//! `zero_grad(set_to_none=True)` arranges): no zeroing pass and no accumulation into `.grad`.
//!
//! On the CPU, when every parameter, gradient and moment is a contiguous fp32 tensor, the step is
//! one fused pass over memory (read p, g, m, v; write p, m, v) split across the intra-op
//! threads, and the gradient norm another: the update is memory-bound, and the tensor-op version
//! makes about ten passes with temporaries. Elsewhere (CUDA) the tensor ops run.
use std::sync::atomic::{AtomicUsize, Ordering};

use tch::{Device, Kind, Tensor};

use crate::resume::StateError;

/// Elements per unit of work in the fused CPU passes.
const CHUNK: usize = 1 << 16;

/// A raw fp32 view of a contiguous CPU tensor.
#[derive(Clone, Copy)]
struct Buffer {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: buffers point into tensors that outlive the scoped threads using them, and each thread
// touches a disjoint range (`Work`), so no element is accessed by two threads at once.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

impl Buffer {
    fn of(t: &Tensor) -> Option<Self> {
        let ok = t.defined()
            && t.device() == Device::Cpu
            && t.kind() == Kind::Float
            && t.is_contiguous();
        ok.then(|| Self {
            ptr: t.data_ptr() as *mut f32,
            len: t.numel(),
        })
    }

    /// # Safety
    /// The range must be in bounds, the tensor alive, and the range not accessed by another
    /// thread while the slice lives.
    unsafe fn slice<'a>(self, start: usize, end: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.ptr.add(start), end - start)
    }
}

/// Ranges of all parameters cut into chunks, processed by `threads` scoped threads that take the
/// next chunk from a shared counter; results come back in chunk order (deterministic).
fn for_chunks<T: Send + Default + Clone>(
    lens: &[usize],
    threads: usize,
    work: impl Fn(usize, usize, usize) -> T + Sync,
) -> Vec<T> {
    let mut units = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        let mut start = 0;
        while start < len {
            let end = (start + CHUNK).min(len);
            units.push((i, start, end));
            start = end;
        }
    }
    let next = AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<T>> = (0..units.len()).map(|_| Default::default()).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(i, start, end)) = units.get(k) else {
                    break;
                };
                let value = work(i, start, end);
                if let Ok(mut slot) = results[k].lock() {
                    *slot = value;
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_default())
        .collect()
}

pub struct AdamW {
    params: Vec<Tensor>,
    /// Gradients of the last `backward`, one per parameter (undefined when it had none).
    grads: Vec<Tensor>,
    decay: Vec<bool>,
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
    pub fn new(params: Vec<(Tensor, bool)>, weight_decay: f64) -> Self {
        let exp_avg = params.iter().map(|(p, _)| p.zeros_like()).collect();
        let exp_avg_sq = params.iter().map(|(p, _)| p.zeros_like()).collect();
        let (params, decay) = params.into_iter().unzip();
        Self {
            params,
            grads: Vec::new(),
            decay,
            exp_avg,
            exp_avg_sq,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// Computes the gradients of `loss` with respect to the parameters (replacing the last ones).
    pub fn backward(&mut self, loss: &Tensor) {
        self.grads.clear();
        self.grads = Tensor::run_backward(&[loss], &self.params, false, false);
    }

    /// The gradients of the last `backward` (in parameter order; undefined for unused ones).
    #[cfg(test)]
    fn grads(&self) -> &[Tensor] {
        &self.grads
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

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        if let Some(buffers) = self.cpu_buffers() {
            let lens: Vec<usize> = buffers.iter().map(|(_, b)| b[1].len).collect();
            let threads = tch::get_num_threads().max(1) as usize;
            let partial = for_chunks(&lens, threads, |i, start, end| {
                // SAFETY: in bounds; this pass only reads the gradients.
                let g = unsafe { buffers[i].1[1].slice(start, end) };
                g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>()
            });
            let total = partial.iter().sum::<f64>().sqrt();
            if total > max_norm {
                let coef = (max_norm / (total + 1e-6)) as f32;
                for_chunks(&lens, threads, |i, start, end| {
                    // SAFETY: in bounds; each chunk is scaled by one thread.
                    let g = unsafe { buffers[i].1[1].slice(start, end) };
                    g.iter_mut().for_each(|x| *x *= coef);
                });
            }
            return total;
        }
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .grads
                .iter()
                .filter(|g| g.defined())
                .map(|g| g.norm())
                .collect();
            if norms.is_empty() {
                return 0.0;
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
            total
        })
    }

    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        if let Some(buffers) = self.cpu_buffers() {
            return self.fused_cpu_step(&buffers, lr, bc1, bc2);
        }

        tch::no_grad(|| {
            for i in 0..self.params.len() {
                let Some(g) = self.grad(i).map(Tensor::shallow_clone) else {
                    continue;
                };
                let mut p = self.params[i].shallow_clone();
                let mut m = self.exp_avg[i].shallow_clone();
                let mut v = self.exp_avg_sq[i].shallow_clone();
                let _ = m.lerp_(&g, 1.0 - self.beta1);
                let _ = v.g_mul_scalar_(self.beta2);
                let _ = v.addcmul_(&(&g * (1.0 - self.beta2)), &g);
                if self.decay[i] && self.weight_decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let denom = (&v / bc2).sqrt() + self.eps;
                let update = (&m / bc1) / denom * lr;
                let _ = p.g_sub_(&update);
            }
        });
    }

    /// The same update as the tensor-op path, in one pass per element.
    fn fused_cpu_step(&self, buffers: &[(usize, [Buffer; 4])], lr: f64, bc1: f64, bc2: f64) {
        let lens: Vec<usize> = buffers.iter().map(|(_, b)| b[0].len).collect();
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let eps = self.eps as f32;
        let decays: Vec<f32> = buffers
            .iter()
            .map(|&(param, _)| {
                if self.decay[param] && self.weight_decay > 0.0 {
                    (1.0 - lr * self.weight_decay) as f32
                } else {
                    1.0
                }
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
            let decay = decays[i];
            for k in 0..p.len() {
                let grad = g[k];
                m[k] += (grad - m[k]) * (1.0 - b1);
                v[k] = v[k] * b2 + grad * grad * (1.0 - b2);
                let denom = v[k].sqrt() / bc2_sqrt + eps;
                p[k] = p[k] * decay - step_size * m[k] / denom;
            }
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

    pub fn load_state(
        &mut self,
        step: i64,
        tensors: &[(String, Tensor)],
    ) -> Result<(), StateError> {
        let find = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| StateError::MissingMoment(name.to_string()))
        };
        tch::no_grad(|| -> Result<(), StateError> {
            for i in 0..self.params.len() {
                self.exp_avg[i]
                    .shallow_clone()
                    .copy_(&find(&format!("exp_avg.{i}"))?.to_kind(Kind::Float));
                self.exp_avg_sq[i]
                    .shallow_clone()
                    .copy_(&find(&format!("exp_avg_sq.{i}"))?.to_kind(Kind::Float));
            }
            Ok(())
        })?;
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

    #[test]
    fn clipping_bounds_the_global_norm() {
        let w = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![(w.shallow_clone(), false)], 0.0);
        opt.backward(&(&w * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float));
        let before = opt.clip_grad_norm(1.0);
        assert!((before - 5.0).abs() < 1e-6);
        let after = opt.grads()[0].norm().double_value(&[]);
        assert!((after - 1.0).abs() < 1e-4, "{after}");
    }
}
