//! L2-regularised binary logistic regression on sparse rows, fitted with L-BFGS, and its
//! one-vs-rest extension. Objective (scikit-learn's): `C · Σ log(1 + exp(-y·(w·x + b))) + ½‖w‖²`,
//! intercept not penalised.
use super::tfidf::SparseRow;

pub struct LogisticRegression {
    pub weights: Vec<f64>,
    pub intercept: f64,
}

fn dot(row: &SparseRow, w: &[f64]) -> f64 {
    row.iter().map(|&(i, v)| w[i as usize] * v as f64).sum()
}

/// log(1 + exp(z)) without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Objective and gradient at `theta = [w..., b]`.
fn objective(x: &[SparseRow], y: &[bool], c: f64, theta: &[f64], grad: &mut [f64]) -> f64 {
    let d = theta.len() - 1;
    let (w, b) = (&theta[..d], theta[d]);
    grad.iter_mut().for_each(|g| *g = 0.0);
    let mut loss = 0.0;
    for (row, &label) in x.iter().zip(y) {
        let s = if label { 1.0 } else { -1.0 };
        let z = dot(row, w) + b;
        loss += softplus(-s * z);
        // d/dz softplus(-s z) = -s · sigmoid(-s z)
        let dz = -s * sigmoid(-s * z) * c;
        for &(i, v) in row {
            grad[i as usize] += dz * v as f64;
        }
        grad[d] += dz;
    }
    let mut reg = 0.0;
    for i in 0..d {
        reg += w[i] * w[i];
        grad[i] += w[i];
    }
    c * loss + 0.5 * reg
}

fn dotv(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl LogisticRegression {
    /// Fits with L-BFGS (memory 10, Armijo backtracking) until the gradient's max-norm is below
    /// 1e-4 or 500 iterations.
    pub fn fit(x: &[SparseRow], num_features: usize, y: &[bool], c: f64) -> Self {
        let n = num_features + 1;
        let mut theta = vec![0.0; n];
        let mut grad = vec![0.0; n];
        let mut f = objective(x, y, c, &theta, &mut grad);
        let mut history: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::new();
        let mut new_grad = vec![0.0; n];
        for _ in 0..500 {
            if grad.iter().fold(0.0f64, |m, g| m.max(g.abs())) < 1e-4 {
                break;
            }
            // Two-loop recursion: direction = -H·grad.
            let mut q = grad.clone();
            let mut alphas = Vec::with_capacity(history.len());
            for (s, yv, rho) in history.iter().rev() {
                let a = rho * dotv(s, &q);
                q.iter_mut().zip(yv).for_each(|(qi, yi)| *qi -= a * yi);
                alphas.push(a);
            }
            let gamma = match history.last() {
                Some((s, yv, _)) => dotv(s, yv) / dotv(yv, yv),
                None => 1.0 / dotv(&grad, &grad).sqrt().max(1e-12),
            };
            q.iter_mut().for_each(|v| *v *= gamma);
            for ((s, yv, rho), a) in history.iter().zip(alphas.iter().rev()) {
                let b = rho * dotv(yv, &q);
                q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
            }
            let dir: Vec<f64> = q.iter().map(|v| -v).collect();
            let slope = dotv(&grad, &dir);
            if slope >= 0.0 {
                history.clear();
                continue;
            }
            let mut step = 1.0;
            let mut candidate = vec![0.0; n];
            let mut f_new;
            loop {
                candidate
                    .iter_mut()
                    .zip(theta.iter().zip(&dir))
                    .for_each(|(c, (t, d))| *c = t + step * d);
                f_new = objective(x, y, c, &candidate, &mut new_grad);
                if f_new <= f + 1e-4 * step * slope || step < 1e-10 {
                    break;
                }
                step *= 0.5;
            }
            let s: Vec<f64> = candidate.iter().zip(&theta).map(|(a, b)| a - b).collect();
            let yv: Vec<f64> = new_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
            let sy = dotv(&s, &yv);
            if sy > 1e-12 {
                history.push((s, yv, 1.0 / sy));
                if history.len() > 10 {
                    history.remove(0);
                }
            }
            let improvement = f - f_new;
            theta.copy_from_slice(&candidate);
            grad.copy_from_slice(&new_grad);
            f = f_new;
            if improvement.abs() < 1e-10 * f.abs().max(1.0) {
                break;
            }
        }
        let intercept = theta[num_features];
        theta.truncate(num_features);
        Self {
            weights: theta,
            intercept,
        }
    }

    pub fn predict_proba(&self, row: &SparseRow) -> f64 {
        sigmoid(dot(row, &self.weights) + self.intercept)
    }
}

/// One independent binary classifier per label.
pub struct OneVsRest {
    pub models: Vec<LogisticRegression>,
}

impl OneVsRest {
    /// `y[label][example]`.
    pub fn fit(x: &[SparseRow], num_features: usize, y: &[Vec<bool>], c: f64) -> Self {
        let models = std::thread::scope(|scope| {
            let handles: Vec<_> = y
                .iter()
                .map(|labels| {
                    scope.spawn(move || LogisticRegression::fit(x, num_features, labels, c))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("fit thread"))
                .collect()
        });
        Self { models }
    }

    /// Row-major `[examples × labels]` probabilities.
    pub fn predict_proba(&self, x: &[SparseRow]) -> Vec<f32> {
        x.iter()
            .flat_map(|row| self.models.iter().map(move |m| m.predict_proba(row) as f32))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_a_simple_problem_and_matches_the_optimum() {
        // Feature 0 marks positives, feature 1 negatives.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..40 {
            let pos = i % 2 == 0;
            x.push(vec![(if pos { 0 } else { 1 }, 1.0f32)]);
            y.push(pos);
        }
        let m = LogisticRegression::fit(&x, 2, &y, 1.0);
        // With C = 1 the optimum solves 20·σ(-w) = w, i.e. w ≈ 2.12 and p ≈ 0.89.
        assert!(m.predict_proba(&vec![(0, 1.0)]) > 0.85);
        assert!(m.predict_proba(&vec![(1, 1.0)]) < 0.15);
        // At the optimum the gradient vanishes.
        let mut theta = m.weights.clone();
        theta.push(m.intercept);
        let mut g = vec![0.0; 3];
        objective(&x, &y, 1.0, &theta, &mut g);
        assert!(g.iter().all(|v| v.abs() < 1e-3), "{g:?}");
        // By symmetry w0 = -w1 and b ≈ 0.
        assert!((m.weights[0] + m.weights[1]).abs() < 1e-3 && m.intercept.abs() < 1e-3);
    }
}
