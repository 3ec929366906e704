//! Runs the API server stand-in by hand, for poking at it with kubectl:
//! `cargo run -p testkit --bin standin-apiserver`, then `export KUBECONFIG=<printed path>`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = testkit::apiserver::Options {
        scheduler: true,
        ..Default::default()
    };
    let server = testkit::apiserver::ApiServer::start(options).await?;
    println!("stand-in API server at {}", server.url());
    println!("export KUBECONFIG={}", server.admin_kubeconfig().display());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
