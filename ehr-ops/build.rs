// The schema migrations are embedded at compile time, so a new or changed file
// under migrations/ must rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
