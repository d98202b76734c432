//! AdamW with decoupled weight decay, a linear warmup/decay schedule and global-norm gradient
//! clipping. Written here rather than using tch's optimizer so its moments can be saved and
//! restored for resumable training.
use tch::{Kind, Tensor};

use crate::resume::StateError;

pub struct AdamW {
    params: Vec<Tensor>,
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

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.grad())
                .filter(|g| g.defined())
                .map(|g| g.norm())
                .collect();
            if norms.is_empty() {
                return 0.0;
            }
            let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
            if total > max_norm {
                let coef = max_norm / (total + 1e-6);
                for p in &self.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(coef);
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
        tch::no_grad(|| {
            for i in 0..self.params.len() {
                let g = self.params[i].grad();
                if !g.defined() {
                    continue;
                }
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
        loss.backward();
        opt.step(0.01);
        let got: Vec<f32> = Vec::try_from(w.detach()).unwrap();
        // decay first: w * (1 - 0.01*0.1), then -0.01 * sign(grad)
        let expect = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        for (g, e) in got.iter().zip(expect) {
            assert!((*g as f64 - e).abs() < 1e-6, "{got:?} vs {expect:?}");
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let w = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![(w.shallow_clone(), false)], 0.0);
        (&w * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        let before = opt.clip_grad_norm(1.0);
        assert!((before - 5.0).abs() < 1e-6);
        let after = w.grad().norm().double_value(&[]);
        assert!((after - 1.0).abs() < 1e-4, "{after}");
    }
}
