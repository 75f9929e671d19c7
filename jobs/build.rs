// The engine's and the domain's migrations are embedded at compile time (`sqlx::migrate!`): a
// migration added to either folder must rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=../migrations/engine");
    println!("cargo:rerun-if-changed=../migrations/jobs");
}
