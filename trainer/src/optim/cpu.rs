//! The CPU side of AdamW: raw fp32 views of contiguous tensors, a chunked pass over all
//! parameters on scoped threads, and the two memory-bound kernels (sum of squares of the
//! gradients, and the update). The kernels are compiled for AVX-512 and AVX2 as well as the
//! baseline and picked at run time (`common::simd_dispatch!`); Rust never contracts `a * b + c` into an FMA, so every level
//! gives bit-identical results.
use std::sync::atomic::{AtomicUsize, Ordering};

use tch::{Device, Kind, Tensor};

/// Elements per unit of work in the fused CPU passes.
const CHUNK: usize = 1 << 16;

/// A raw fp32 view of a contiguous CPU tensor.
#[derive(Clone, Copy)]
pub(super) struct Buffer {
    ptr: *mut f32,
    pub(super) len: usize,
}

// SAFETY: buffers point into tensors that outlive the scoped threads using them, and each thread
// touches a disjoint range (`for_chunks`), so no element is accessed by two threads at once.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

impl Buffer {
    pub(super) fn of(t: &Tensor) -> Option<Self> {
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
    pub(super) unsafe fn slice<'a>(self, start: usize, end: usize) -> &'a mut [f32] {
        if start >= end {
            // A zero-element tensor's data pointer may be null, which a slice must never hold.
            return &mut [];
        }
        std::slice::from_raw_parts_mut(self.ptr.add(start), end - start)
    }
}

/// Ranges of all parameters cut into chunks, processed by `threads` scoped threads that take the
/// next chunk from a shared counter; results come back in chunk order (deterministic).
pub(super) fn for_chunks<T: Send + Default + Clone>(
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

/// The per-step constants of the AdamW update.
#[derive(Clone, Copy)]
pub(super) struct UpdateScalars {
    pub(super) beta1: f32,
    pub(super) beta2: f32,
    /// lr / (1 - beta1^t).
    pub(super) step_size: f32,
    /// sqrt(1 - beta2^t).
    pub(super) bc2_sqrt: f32,
    pub(super) eps: f32,
    /// Multiplies the gradient first (the clipping coefficient, 1 when not clipped).
    pub(super) grad_scale: f32,
}

/// Sum of squares in f64: eight independent lanes, so the loop vectorises without reordering
/// anything a compiler may not reorder.
#[inline(always)]
fn sum_squares_body(g: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = g.chunks_exact(8);
    for c in &mut chunks {
        for j in 0..8 {
            let x = f64::from(c[j]);
            lanes[j] += x * x;
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum();
    lanes.iter().sum::<f64>() + tail
}

/// One AdamW update per element: decoupled decay, moments, bias-corrected step.
#[inline(always)]
fn update_body(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    decay: f32,
    s: UpdateScalars,
) {
    let n = p.len().min(g.len()).min(m.len()).min(v.len());
    let (p, g, m, v) = (&mut p[..n], &g[..n], &mut m[..n], &mut v[..n]);
    for k in 0..n {
        let grad = g[k] * s.grad_scale;
        m[k] += (grad - m[k]) * (1.0 - s.beta1);
        v[k] = v[k] * s.beta2 + grad * grad * (1.0 - s.beta2);
        let denom = v[k].sqrt() / s.bc2_sqrt + s.eps;
        p[k] = p[k] * decay - s.step_size * m[k] / denom;
    }
}

common::simd_dispatch! {
    pub(super) fn sum_squares(g: &[f32]) -> f64 = sum_squares_body, at sum_squares_at;
}

common::simd_dispatch! {
    pub(super) fn update(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        decay: f32,
        s: UpdateScalars,
    ) = update_body, at update_at;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set the machine has must give the baseline's bits (no FMA contraction,
    /// no reordered sums), on lengths that leave a remainder.
    #[test]
    fn vector_kernels_give_the_baseline_bits() {
        let n = 1003;
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3)
            .collect();
        let p0: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
        let m0: Vec<f32> = (0..n).map(|i| (i as f32).cos() * 1e-2).collect();
        let v0: Vec<f32> = (0..n).map(|i| ((i % 7) as f32) * 1e-4).collect();
        let s = UpdateScalars {
            beta1: 0.9,
            beta2: 0.999,
            step_size: 1e-3,
            bc2_sqrt: 0.3,
            eps: 1e-8,
            grad_scale: 0.7,
        };
        type Kernel<'a> = &'a dyn Fn(&mut [f32], &[f32], &mut [f32], &mut [f32]);
        let run = |f: Kernel| {
            let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
            f(&mut p, &g, &mut m, &mut v);
            (p, m, v)
        };
        let base = run(&|p, g, m, v| update_body(p, g, m, v, 0.99, s));
        for level in common::simd::available() {
            let at_level = run(&|p, g, m, v| {
                update_at(level, p, g, m, v, 0.99, s).expect("the CPU has this level")
            });
            assert_eq!(base, at_level, "update at {level:?}");
            assert_eq!(
                sum_squares_at(level, &g).expect("the CPU has this level"),
                sum_squares_body(&g),
                "sum of squares at {level:?}"
            );
        }
        assert_eq!(base, run(&|p, g, m, v| update(p, g, m, v, 0.99, s)));
        // One element by hand: the scaled gradient enters both moments.
        let grad = g[5] * 0.7;
        let m5 = m0[5] + (grad - m0[5]) * (1.0 - 0.9);
        assert_eq!(base.1[5], m5);
        let exact: f64 = g.iter().map(|&x| f64::from(x).powi(2)).sum();
        assert!((sum_squares(&g) - exact).abs() < 1e-12 * exact.max(1.0));
    }

    #[test]
    fn zero_element_tensors_give_empty_views() {
        let empty = Tensor::zeros([0], (Kind::Float, Device::Cpu));
        let buffer = Buffer::of(&empty).expect("a contiguous fp32 CPU tensor");
        assert_eq!(buffer.len, 0);
        // SAFETY: an empty range.
        assert!(unsafe { buffer.slice(0, 0) }.is_empty());
        assert_eq!(sum_squares(&[]), 0.0);
        let ran = for_chunks(&[0, 3], 2, |i, start, end| (i, start, end));
        assert_eq!(ran, vec![(1, 0, 3)], "no unit of work for the empty tensor");
    }
}
