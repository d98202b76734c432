//! Dropout for training on the CPU. libtorch draws a CPU dropout mask one element at a time on
//! one thread (`bernoulli_` through the global generator), about 5 % of a MiniLM training step
//! on 2 cores with the other core idle. Here the mask comes from a counter-based hash of the
//! element index and a per-call key, on all intra-op threads and in vector registers; the key is
//! drawn from libtorch's generator, so `tch::manual_seed` still decides every mask. Same
//! semantics as `torch.nn.functional.dropout`: each element is kept with probability 1 - p and
//! scaled by 1 / (1 - p); the gradient flows through the same mask. Elsewhere (CUDA), libtorch's
//! fused kernel runs.
use tch::{Device, Kind, Tensor};

/// Below this many elements the mask is drawn on the calling thread only.
const PARALLEL_FROM: usize = 1 << 15;

/// `x` with dropout `p` when `train` is set (and unchanged otherwise).
pub(crate) fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    let n = x.numel();
    if x.device() != Device::Cpu || p >= 1.0 || n >= u32::MAX as usize {
        return x.dropout(p, train);
    }
    x * &mask(x.size().as_slice(), p, x.kind())
}

/// A dropout mask of `shape`: 1 / (1 - p) with probability 1 - p, else 0, in `kind`, under a
/// key drawn from libtorch's generator.
fn mask(shape: &[i64], p: f64, kind: Kind) -> Tensor {
    mask_with_key(shape, p, kind, key_from_torch_generator())
}

/// The mask of `shape` that `key` decides.
fn mask_with_key(shape: &[i64], p: f64, kind: Kind, key: u64) -> Tensor {
    let mask = Tensor::empty(shape, (Kind::Float, Device::Cpu));
    let n = mask.numel();
    if n == 0 {
        // Its data pointer may be null: nothing to fill, and no slice may be made of it.
        return mask.to_kind(kind);
    }
    // Kept when the hash is at or above p · 2³².
    let threshold = (p * 4_294_967_296.0).min(u32::MAX as f64) as u32;
    let scale = (1.0 / (1.0 - p)) as f32;
    let ptr = mask.data_ptr() as usize;
    let fill = |start: usize, end: usize| {
        // SAFETY: `mask` is a fresh contiguous fp32 tensor of `n` > 0 elements that outlives
        // this call, and the callers give each thread a disjoint range within it.
        let out =
            unsafe { std::slice::from_raw_parts_mut((ptr as *mut f32).add(start), end - start) };
        fill_mask(out, start as u32, key, threshold, scale);
    };
    let threads = (tch::get_num_threads().max(1) as usize)
        .min(n / PARALLEL_FROM)
        .max(1);
    if threads == 1 {
        fill(0, n);
    } else {
        let per = n.div_ceil(threads);
        std::thread::scope(|scope| {
            for t in 1..threads {
                let fill = &fill;
                scope.spawn(move || fill(t * per, ((t + 1) * per).min(n)));
            }
            fill(0, per.min(n));
        });
    }
    if kind == Kind::Float {
        mask
    } else {
        mask.to_kind(kind)
    }
}

/// 64 random bits from libtorch's default CPU generator (what `tch::manual_seed` seeds).
fn key_from_torch_generator() -> u64 {
    let draw = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu));
    draw.int64_value(&[0]) as u64
}

/// A 32-bit integer hash with full avalanche (xor-shift / multiply rounds).
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x21f0_aaad);
    x ^= x >> 15;
    x = x.wrapping_mul(0xd35a_2d97);
    x ^ (x >> 15)
}

/// The random 32 bits of element `index` under `key`.
#[inline(always)]
fn bits(index: u32, key: u64) -> u32 {
    mix32(mix32(index ^ key as u32).wrapping_add((key >> 32) as u32))
}

#[inline(always)]
fn fill_body(out: &mut [f32], first: u32, key: u64, threshold: u32, scale: f32) {
    for (i, o) in out.iter_mut().enumerate() {
        let keep = bits(first.wrapping_add(i as u32), key) >= threshold;
        *o = if keep { scale } else { 0.0 };
    }
}

crate::simd_dispatch! {
    fn fill_mask(out: &mut [f32], first: u32, key: u64, threshold: u32, scale: f32) = fill_body, at fill_mask_at;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_minus_p_scaled_and_the_gradient_follows_the_mask() {
        let x = Tensor::ones([64, 50, 48], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = dropout(&x, 0.1, true);
        let kept = y
            .gt(0.0)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        // 153,600 draws: the kept share's standard deviation is about 0.0008.
        assert!((kept - 0.9).abs() < 0.004, "kept {kept}");
        let values: Vec<f32> = Vec::try_from(y.detach().reshape([-1])).unwrap();
        assert!(values
            .iter()
            .all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // Neighbouring elements must not be correlated (a weak hash shows it first there).
        let both_dropped = values
            .windows(2)
            .filter(|w| w[0] == 0.0 && w[1] == 0.0)
            .count() as f64
            / (values.len() - 1) as f64;
        assert!((both_dropped - 0.01).abs() < 0.002, "pairs {both_dropped}");
        let grad = Tensor::run_backward(&[y.sum(Kind::Float)], &[&x], false, false);
        assert!(grad[0].equal(&y.detach()), "the gradient is the mask");
        assert!(dropout(&x, 0.1, false).equal(&x));
    }

    /// Share of positions where two masks agree (both kept or both dropped).
    fn agreement(a: &Tensor, b: &Tensor) -> f64 {
        a.eq_tensor(b)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    }

    #[test]
    fn a_key_decides_the_mask_and_other_keys_draw_independent_ones() {
        let shape = [300, 200];
        let key = 0x0123_4567_89ab_cdef_u64;
        let a = mask_with_key(&shape, 0.5, Kind::Float, key);
        assert!(a.equal(&mask_with_key(&shape, 0.5, Kind::Float, key)));
        // Independent masks at p = 0.5 agree on half the positions (60,000 draws: sd 0.002).
        // Neighbouring keys (successive calls, successive seeds) are where a weak mix shows.
        for other in [key + 1, key ^ (1 << 32), key.rotate_left(17), !key] {
            let b = mask_with_key(&shape, 0.5, Kind::Float, other);
            let agree = agreement(&a, &b);
            assert!(
                (agree - 0.5).abs() < 0.01,
                "key {other:#x}: agreement {agree}"
            );
        }
        assert_eq!(
            mask_with_key(&shape, 0.5, Kind::BFloat16, key).kind(),
            Kind::BFloat16
        );
        let empty = mask_with_key(&[0, 7], 0.5, Kind::Float, key);
        assert_eq!(empty.size(), vec![0, 7]);
        let x = Tensor::zeros([4, 0], (Kind::Float, Device::Cpu));
        assert_eq!(dropout(&x, 0.1, true).size(), vec![4, 0]);
    }

    /// Runs in a process of its own (started by `the_torch_seed_decides_the_mask`), so no test
    /// running in parallel draws from libtorch's global generator in between.
    #[test]
    #[ignore = "started in a child process by the_torch_seed_decides_the_mask"]
    fn torch_seed_child() {
        let shape = [300, 200];
        tch::manual_seed(5);
        let first = mask(&shape, 0.5, Kind::Float);
        let second = mask(&shape, 0.5, Kind::Float);
        tch::manual_seed(5);
        let again = mask(&shape, 0.5, Kind::Float);
        tch::manual_seed(6);
        let other_seed = mask(&shape, 0.5, Kind::Float);
        assert!(first.equal(&again), "same seed, same mask");
        for (what, m) in [("a second call", &second), ("another seed", &other_seed)] {
            let agree = agreement(&first, m);
            assert!((agree - 0.5).abs() < 0.01, "{what}: agreement {agree}");
        }
    }

    #[test]
    fn the_torch_seed_decides_the_mask() {
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "model::dropout::tests::torch_seed_child",
                "--ignored",
                "--test-threads=1",
            ])
            .output()
            .expect("run the child test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn every_instruction_set_gives_the_same_mask() {
        let mut base = vec![0.0f32; 4099];
        fill_body(&mut base, 7, 0x1234_5678_9abc_def0, 1 << 30, 2.0);
        for level in crate::simd::available() {
            let mut at_level = vec![1.0f32; 4099];
            fill_mask_at(level, &mut at_level, 7, 0x1234_5678_9abc_def0, 1 << 30, 2.0)
                .expect("the CPU has this level");
            assert_eq!(base, at_level, "{level:?}");
        }
        let kept = base.iter().filter(|&&v| v == 2.0).count() as f64 / base.len() as f64;
        assert!((kept - 0.75).abs() < 0.03, "kept {kept}");
    }
}
