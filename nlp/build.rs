//! Links OpenBLAS, which the encoder's matrix products call (`src/blas.rs`).
//!
//! pkg-config finds the library. On Debian and Ubuntu the package
//! `libopenblas-dev` provides it and its `openblas.pc`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(error) = pkg_config::Config::new()
        .atleast_version("0.3")
        .probe("openblas")
    {
        panic!(
            "OpenBLAS 0.3 or newer was not found. Install it with pkg-config \
             (on Debian or Ubuntu: apt-get install libopenblas-dev pkg-config), \
             or set PKG_CONFIG_PATH to the folder that contains openblas.pc.\n\
             pkg-config reported: {error}"
        );
    }
}
