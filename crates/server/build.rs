//! Compiles the server again when the web app is rebuilt, so the binary
//! always embeds what `web/todo/dist` holds (see `src/routes/app/embedded.rs`).
//!
//! The embedding macro reads the directory's listing at compile time, and
//! cargo only tracks the files it included: a rebuild of the app that adds
//! or removes files (Vite names them by their content's hash) would go
//! unnoticed without this.

fn main() {
    let dist = std::path::Path::new("../../web/todo/dist");
    if dist.is_dir() {
        // Scanned recursively: any file added, removed or changed.
        println!("cargo::rerun-if-changed=../../web/todo/dist");
    } else {
        // A missing path would make cargo run this script (and compile the
        // server) on every build; the directory that `dist` appears in
        // changes when it is built. It holds only the app's sources.
        println!("cargo::rerun-if-changed=../../web/todo");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
