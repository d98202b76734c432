//! Which vector instructions the CPU offers, for the few hand-written kernels (the optimizer
//! update, dropout masks) that are compiled for several levels and pick one at run time.

/// The widest vector unit this CPU has, among the levels the kernels are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Baseline,
}

/// Detected once per call site by std (the feature check is cached), so cheap to ask per pass.
pub fn detect() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Simd::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Simd::Avx2;
        }
    }
    Simd::Baseline
}
