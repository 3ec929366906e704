//! A user's first WebAssembly pod: it greets on stdout and stderr, lists its arguments and
//! environment, and exits.

fn main() {
    println!("Hello, world! This is WebAssembly running as a Kubernetes pod.");
    eprintln!("hello from stderr!");
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("args: {args:?}");
    for (key, value) in std::env::vars() {
        println!("env: {key}={value}");
    }
}
