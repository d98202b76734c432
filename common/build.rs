//! Records libtorch's lib folder so the runtime can find libtorch_cuda.so, and gives test binaries an rpath to it.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=LIBTORCH_LIB_DIR={dir}");
        println!("cargo:libtorch_lib={dir}");
    }
}
