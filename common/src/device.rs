//! Device selection. tch does not load `libtorch_cuda.so` by itself, so it is opened here when
//! present (next to libtorch, or on the library path) before asking whether CUDA is available.
//! Also: bf16 support (CUDA compute capability, CPU instructions), and TF32 matmuls for fp32 runs
//! on CUDA.
use std::ffi::{c_int, CString};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

static CUDA_LOADED: OnceLock<bool> = OnceLock::new();

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?} (expected auto, cpu, cuda or cuda:N)")]
    Unknown(String),
    #[error("CUDA device {0} requested but not available (is libtorch_cuda.so installed?)")]
    Unavailable(usize),
}

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

/// The environment switch libtorch reads at start-up to let fp32 matmuls use TF32 tensor cores
/// (what `torch.backends.cuda.matmul.allow_tf32 = True` does in Python).
pub const TF32_ENV: &str = "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE";

/// Allows TF32 tensor-core matmuls for fp32 work on CUDA, unless the environment already decides.
/// Must run before the first CUDA operation; fp32 master weights and reductions are unaffected.
pub fn allow_tf32() {
    if std::env::var_os(TF32_ENV).is_none() {
        std::env::set_var(TF32_ENV, "1");
    }
}

/// The (major, minor) compute capability of CUDA device `index`, read from the CUDA runtime that
/// libtorch_cuda loaded; `None` when it cannot be read.
pub fn cuda_compute_capability(index: usize) -> Option<(i32, i32)> {
    type GetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
    // cudaDevAttrComputeCapabilityMajor / Minor in the CUDA runtime API.
    const MAJOR: c_int = 75;
    const MINOR: c_int = 76;
    let name = CString::new("cudaDeviceGetAttribute").ok()?;
    // SAFETY: looks up a symbol in the libraries already loaded into the process.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if symbol.is_null() {
        return None;
    }
    // SAFETY: cudaDeviceGetAttribute(int*, cudaDeviceAttr, int) -> cudaError_t, a stable C ABI.
    let get: GetAttribute = unsafe { std::mem::transmute(symbol) };
    let (mut major, mut minor) = (0, 0);
    let device = c_int::try_from(index).ok()?;
    // SAFETY: valid out-pointers to stack integers.
    let ok = unsafe { get(&mut major, MAJOR, device) == 0 && get(&mut minor, MINOR, device) == 0 };
    ok.then_some((major, minor))
}

/// Whether CUDA device `index` computes in bf16 natively (compute capability 8.0 or newer). When
/// the capability cannot be read, a small bf16 matmul on the device decides.
pub fn cuda_bf16_supported(index: usize) -> bool {
    match cuda_compute_capability(index) {
        Some((major, _)) => major >= 8,
        None => Tensor::f_ones([8, 8], (Kind::BFloat16, Device::Cuda(index)))
            .and_then(|t| t.f_matmul(&t))
            .is_ok(),
    }
}

/// Whether this CPU has bf16 dot-product instructions (AVX512-BF16), which libtorch's oneDNN uses
/// for bf16 matmuls; without them bf16 is emulated and slower than fp32.
pub fn cpu_bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether training in bf16 is faster than in fp32 on this CPU, by the kernel's /proc/cpuinfo
/// (see [`bf16_training_pays`]).
pub fn cpu_trains_faster_in_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| bf16_training_pays(&info))
        .unwrap_or(false)
}

/// The CPUs where MiniLM trained faster in bf16 than in fp32 with libtorch's oneDNN, as
/// measured (`scripts/bench-train-precision.sh`): Intel CPUs with AMX tiles the kernel lets
/// programs use (`amx_tile` and `amx_bf16`; Linux hides them when it cannot save the tile
/// state) and AMD CPUs with AVX512-BF16 (Zen 4 and later). An Intel CPU with AVX512-BF16 but
/// no usable AMX trained slower in bf16.
pub(crate) fn bf16_training_pays(cpuinfo: &str) -> bool {
    let flags: Vec<&str> = cpuinfo_field(cpuinfo, "flags")
        .map(|f| f.split_whitespace().collect())
        .unwrap_or_default();
    let has = |flag: &str| flags.contains(&flag);
    let amx = has("amx_tile") && has("amx_bf16");
    let amd_bf16 =
        cpuinfo_field(cpuinfo, "vendor_id") == Some("AuthenticAMD") && has("avx512_bf16");
    amx || amd_bf16
}

/// The value of the first `name : value` line of a /proc/cpuinfo text.
fn cpuinfo_field<'a>(cpuinfo: &'a str, name: &str) -> Option<&'a str> {
    cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        if key.trim() == name {
            Some(value.trim())
        } else {
            None
        }
    })
}

/// CPUs this process may use: the smaller of its CPU quota (cgroup `cpu.max`) and its affinity
/// mask, as the standard library reads them. libtorch's own default (every core of the machine)
/// oversubscribes a pod limited to a few cores.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Sets libtorch's intra-op thread count: `requested`, else the CPUs available to the process.
/// Logs the choice and returns it.
pub fn init_threads(requested: Option<i32>) -> i32 {
    let (threads, source) = match requested {
        Some(n) => (n.max(1), "--threads"),
        None => (
            i32::try_from(available_cpus()).unwrap_or(1),
            "CPU quota and affinity of the process",
        ),
    };
    tch::set_num_threads(threads);
    tracing::info!(threads, source, "intra-op threads");
    threads
}

/// Parses a device preference: `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
pub fn select(preference: &str) -> Result<Device, DeviceError> {
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
            None => Err(DeviceError::Unknown(other.to_string())),
        },
    }
}

fn cuda(index: usize) -> Result<Device, DeviceError> {
    if tch::Cuda::is_available() && index < tch::Cuda::device_count() as usize {
        Ok(Device::Cuda(index))
    } else {
        Err(DeviceError::Unavailable(index))
    }
}

/// A human-readable device name for logs and job status.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => match cuda_compute_capability(i) {
            Some((major, minor)) => format!(
                "cuda:{i} (compute capability {major}.{minor}, {} device(s) visible)",
                tch::Cuda::device_count()
            ),
            None => format!("cuda:{i} ({} device(s) visible)", tch::Cuda::device_count()),
        },
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::bf16_training_pays;

    #[test]
    fn bf16_training_is_chosen_by_the_kernels_cpu_vendor_and_flags() {
        let sapphire = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\nbugs\t\t: spectre_v1\n";
        let xeon_without_amx = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n";
        let zen4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n";
        let zen3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu avx2 fma\n";
        assert!(bf16_training_pays(sapphire));
        assert!(bf16_training_pays(zen4));
        assert!(!bf16_training_pays(xeon_without_amx));
        assert!(!bf16_training_pays(zen3));
        assert!(!bf16_training_pays(
            "vendor_id\t: GenuineIntel\nflags\t: amx_bf16x amx_tile\n"
        ));
        assert!(!bf16_training_pays(""));
    }
}
