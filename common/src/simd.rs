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

/// Every level this CPU can run, the baseline first (for tests comparing each with the baseline).
pub fn available() -> Vec<Simd> {
    let mut levels = vec![Simd::Baseline];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            levels.push(Simd::Avx2);
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            levels.push(Simd::Avx512);
        }
    }
    levels
}

/// Defines a function that runs `body` (an `#[inline(always)]` function with the same
/// signature) compiled for AVX-512 or AVX2 when the CPU has them, else for the baseline, and,
/// in test builds, `at(level, ...)` under the name given after `at`, which runs it at that level
/// (`None` when this CPU lacks it), so tests can compare every level the CPU has. The body must not depend on the level for its result (no explicit FMA, no
/// reordering).
#[macro_export]
macro_rules! simd_dispatch {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path, at $at:ident;) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::simd::detect() {
                    // SAFETY: the CPU has the feature the function is compiled for.
                    $crate::simd::Simd::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::simd::Simd::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::Simd::Baseline => {}
                }
            }
            $body($($arg),*)
        }

        #[cfg(test)]
        fn $at(level: $crate::simd::Simd, $($arg: $ty),*) -> Option<$crate::simd_dispatch!(@ret $($ret)?)> {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match level {
                    $crate::simd::Simd::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
                        // SAFETY: the CPU has the feature the function is compiled for.
                        return Some(unsafe { avx512($($arg),*) });
                    }
                    $crate::simd::Simd::Avx2 if std::arch::is_x86_feature_detected!("avx2") => {
                        // SAFETY: as above.
                        return Some(unsafe { avx2($($arg),*) });
                    }
                    $crate::simd::Simd::Avx512 | $crate::simd::Simd::Avx2 => return None,
                    $crate::simd::Simd::Baseline => {}
                }
            }
            match level {
                $crate::simd::Simd::Baseline => Some($body($($arg),*)),
                _ => None,
            }
        }
    };
    (@ret $ret:ty) => { $ret };
    (@ret) => { () };
}
