//! Device selection. tch does not load `libtorch_cuda.so` by itself, so it is opened here when
//! present (next to libtorch, or on the library path) before asking whether CUDA is available.
use std::sync::OnceLock;

use tch::Device;

static CUDA_LOADED: OnceLock<bool> = OnceLock::new();

/// Opens libtorch's CUDA backend if it is installed; returns whether it was loaded.
pub fn load_cuda_backend() -> bool {
    *CUDA_LOADED.get_or_init(|| {
        // Next to the binary (container layout), where it was built, then the library path.
        let mut candidates = Vec::new();
        if let Some(bin_dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
        {
            candidates.push(
                bin_dir
                    .join("../lib/torch/lib/libtorch_cuda.so")
                    .display()
                    .to_string(),
            );
        }
        if let Some(dir) = option_env!("LIBTORCH_LIB_DIR") {
            candidates.push(format!("{dir}/libtorch_cuda.so"));
        }
        candidates.push("libtorch_cuda.so".to_string());
        for name in candidates {
            let Ok(c_name) = std::ffi::CString::new(name) else {
                continue;
            };
            // SAFETY: dlopen with a valid NUL-terminated path; the handle is kept open for the process.
            let handle =
                unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if !handle.is_null() {
                return true;
            }
        }
        false
    })
}

/// Parses a device preference: `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
pub fn select(preference: &str) -> Result<Device, String> {
    let wants_cuda = preference != "cpu";
    if wants_cuda {
        load_cuda_backend();
    }
    match preference {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => cuda(0),
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => cuda(n),
            None => Err(format!(
                "unknown device {other:?} (expected auto, cpu, cuda or cuda:N)"
            )),
        },
    }
}

fn cuda(index: usize) -> Result<Device, String> {
    if tch::Cuda::is_available() && index < tch::Cuda::device_count() as usize {
        Ok(Device::Cuda(index))
    } else {
        Err(format!(
            "CUDA device {index} requested but not available (is libtorch_cuda.so installed?)"
        ))
    }
}

/// A human-readable device name for logs and job status.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i} ({} device(s) visible)", tch::Cuda::device_count()),
        other => format!("{other:?}"),
    }
}
