//! glibc malloc settings for training. Every step frees and re-allocates the same large buffers
//! (activations, the 47 MB word-embedding gradient of MiniLM, ...). With glibc's defaults,
//! blocks above its mmap threshold (adjusted up to 32 MiB at most) are unmapped on free and come
//! back from the kernel zero-filled page by page, and freed memory at the top of the heap is
//! trimmed, so the next step faults it in again: about 12 k page faults per MiniLM step on 2
//! cores. Raising both thresholds to 1 GiB keeps those buffers in the heap for reuse (RSS stays
//! at its peak between steps, which it reaches anyway).
//!
//! A setting the user made (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, or the matching
//! `glibc.malloc.*` entry of `GLIBC_TUNABLES`) wins for that setting only. Setting either
//! threshold switches off glibc's dynamic mmap threshold, so the trim threshold is raised only
//! once the mmap threshold was accepted: on a glibc that refuses it, both stay glibc's.

/// What was asked of glibc and what it answered, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// glibc accepted the value.
    Set(usize),
    /// glibc refused the value (mallopt returned 0); its own behaviour stays.
    Refused(usize),
    /// The user's environment sets it.
    UserSet,
    /// Not attempted (the mmap threshold was refused or left to the user, or not on glibc).
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MallocReport {
    pub mmap_threshold: Setting,
    pub trim_threshold: Setting,
}

/// The threshold both settings are raised to.
pub const THRESHOLD: usize = 1 << 30;

/// Whether the environment sets `variable` or `tunable` (inside `GLIBC_TUNABLES`).
fn user_sets(env: &dyn Fn(&str) -> Option<String>, variable: &str, tunable: &str) -> bool {
    env(variable).is_some()
        || env("GLIBC_TUNABLES").is_some_and(|t| {
            t.split(':')
                .any(|entry| entry.split('=').next() == Some(tunable))
        })
}

/// Decides and applies the two settings; `mallopt` is glibc's (or a stand-in in tests).
fn configure(
    env: &dyn Fn(&str) -> Option<String>,
    mallopt: &mut dyn FnMut(MallocParam, usize) -> bool,
) -> MallocReport {
    let mmap_threshold = if user_sets(env, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold")
    {
        Setting::UserSet
    } else if mallopt(MallocParam::MmapThreshold, THRESHOLD) {
        Setting::Set(THRESHOLD)
    } else {
        Setting::Refused(THRESHOLD)
    };
    let trim_threshold = if user_sets(env, "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold")
    {
        Setting::UserSet
    } else if !matches!(mmap_threshold, Setting::Set(_)) {
        Setting::Skipped
    } else if mallopt(MallocParam::TrimThreshold, THRESHOLD) {
        Setting::Set(THRESHOLD)
    } else {
        Setting::Refused(THRESHOLD)
    };
    MallocReport {
        mmap_threshold,
        trim_threshold,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MallocParam {
    MmapThreshold,
    TrimThreshold,
}

/// Applies the settings at start (before any thread allocates much); log the report once
/// logging is up.
pub fn keep_freed_buffers_for_reuse() -> MallocReport {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let env = |name: &str| std::env::var(name).ok();
        let mut glibc = |param: MallocParam, value: usize| {
            let param = match param {
                MallocParam::MmapThreshold => libc::M_MMAP_THRESHOLD,
                MallocParam::TrimThreshold => libc::M_TRIM_THRESHOLD,
            };
            let Ok(value) = libc::c_int::try_from(value) else {
                return false;
            };
            // SAFETY: mallopt only changes allocator parameters, under glibc's own arena locks.
            unsafe { libc::mallopt(param, value) == 1 }
        };
        configure(&env, &mut glibc)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        MallocReport {
            mmap_threshold: Setting::Skipped,
            trim_threshold: Setting::Skipped,
        }
    }
}

impl MallocReport {
    /// One log line: info when both settings took, a warning when glibc refused one.
    pub fn log(&self) {
        let refused = [&self.mmap_threshold, &self.trim_threshold]
            .iter()
            .any(|s| matches!(s, Setting::Refused(_)));
        if refused {
            tracing::warn!(mmap_threshold = ?self.mmap_threshold, trim_threshold = ?self.trim_threshold,
                "glibc refused a malloc setting; its defaults stay (training may page-fault more)");
        } else {
            tracing::info!(mmap_threshold = ?self.mmap_threshold, trim_threshold = ?self.trim_threshold,
                "glibc malloc thresholds");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn run(vars: &[(&str, &str)], accept: &[MallocParam]) -> (MallocReport, Vec<MallocParam>) {
        let mut calls = Vec::new();
        let report = configure(&env_of(vars), &mut |p, _| {
            calls.push(p);
            accept.contains(&p)
        });
        (report, calls)
    }

    #[test]
    fn both_thresholds_are_raised_when_glibc_accepts() {
        let all = [MallocParam::MmapThreshold, MallocParam::TrimThreshold];
        let (report, calls) = run(&[], &all);
        assert_eq!(report.mmap_threshold, Setting::Set(THRESHOLD));
        assert_eq!(report.trim_threshold, Setting::Set(THRESHOLD));
        assert_eq!(calls, all);
    }

    #[test]
    fn a_refused_mmap_threshold_leaves_the_trim_threshold_alone() {
        let (report, calls) = run(&[], &[MallocParam::TrimThreshold]);
        assert_eq!(report.mmap_threshold, Setting::Refused(THRESHOLD));
        assert_eq!(report.trim_threshold, Setting::Skipped);
        assert_eq!(calls, [MallocParam::MmapThreshold], "trim never set");
    }

    #[test]
    fn only_the_settings_the_user_made_are_left_to_the_user() {
        let all = [MallocParam::MmapThreshold, MallocParam::TrimThreshold];
        // An unrelated tunable changes nothing.
        let (report, _) = run(&[("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX2")], &all);
        assert_eq!(report.trim_threshold, Setting::Set(THRESHOLD));
        // The user's trim threshold is theirs; the mmap threshold is still raised.
        let (report, calls) = run(
            &[(
                "GLIBC_TUNABLES",
                "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=1",
            )],
            &all,
        );
        assert_eq!(report.mmap_threshold, Setting::Set(THRESHOLD));
        assert_eq!(report.trim_threshold, Setting::UserSet);
        assert_eq!(calls, [MallocParam::MmapThreshold]);
        // The user's mmap threshold: no trim setting from us either.
        let (report, calls) = run(&[("MALLOC_MMAP_THRESHOLD_", "131072")], &all);
        assert_eq!(report.mmap_threshold, Setting::UserSet);
        assert_eq!(report.trim_threshold, Setting::Skipped);
        assert!(calls.is_empty());
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn this_glibc_answers_the_real_call() {
        // Whatever this glibc answers, the report says it (no silent success).
        let report = keep_freed_buffers_for_reuse();
        assert!(!matches!(report.mmap_threshold, Setting::Skipped));
    }
}
