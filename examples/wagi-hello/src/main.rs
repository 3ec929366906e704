//! A WAGI program, as Spin's `executor = { type = "wagi" }` runs one: the request's body on
//! stdin, the CGI variables in the environment, the response (headers, a blank line, the body)
//! on stdout.

use std::io::Read;

fn main() {
    let mut body = String::new();
    let _ = std::io::stdin().read_to_string(&mut body);
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let args: Vec<String> = std::env::args().collect();
    println!("Content-Type: text/plain");
    println!("X-Wagi: yes");
    println!();
    println!("method={}", var("REQUEST_METHOD"));
    println!("path_info={}", var("PATH_INFO"));
    println!("query={}", var("QUERY_STRING"));
    println!("argv={}", args.join(","));
    println!("body={body}");
}
