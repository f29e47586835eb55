// The migrations are embedded at build time (refinery's embed_migrations!): rebuild when a file in
// migrations/ is added or changed, which cargo would not notice on its own.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
