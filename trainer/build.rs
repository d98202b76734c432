//! Gives the binaries an rpath to libtorch: first `$ORIGIN/../lib/torch/lib` (the layout of the
//! container images and `scripts/assemble-runtime.sh`), then the build's libtorch folder.
fn main() {
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/torch/lib");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
