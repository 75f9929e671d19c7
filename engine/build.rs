// The engine's migrations are embedded at compile time (`sqlx::migrate!`): a migration added
// to the folder must rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=../migrations/engine");
}
