//! `feedrank-api migrate`: applies the schema migrations to DATABASE_URL.

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/feedrank";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("migrate") => {
            let url =
                std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string());
            match feedrank_api::migrate::run(&url).await {
                Ok(applied) if applied.is_empty() => println!("migrations: schema is up to date"),
                Ok(applied) => {
                    for m in applied {
                        println!("migrations: applied {m}");
                    }
                }
                Err(e) => {
                    eprintln!("migrations failed: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => {
            eprintln!("usage: feedrank-api migrate");
            std::process::exit(2);
        }
    }
}
