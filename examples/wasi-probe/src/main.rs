//! A guest driven by its arguments, one step after another:
//!
//! `print TEXT`, `eprint TEXT`, `args`, `env`, `sleep MS`, `forever` (sleep without end),
//! `spin` (busy loop without end), `exit CODE`, `trap`, `write PATH TEXT`, `read PATH`, `ls DIR`,
//! `alloc MIB` (allocate and touch that much memory, keeping it), `connect HOST:PORT` (open a
//! TCP connection, send an HTTP/1.0 GET and print the status line), `fill PATH MIB` (write a
//! file of that many MiB), `follow PATH` (print the file's content now and whenever it
//! changes, without end), `spew MIB` (write that many MiB to stdout as one line, without a
//! newline until the end), `tick MS` (print `tick N`, N counting from 0, every MS milliseconds,
//! without end), `await PATH` (wait until the path exists), `open DIR N` (create N files in DIR
//! and keep them all open), `churn DIR N` (create, write and close a file in DIR, N times).
//! A step that fails prints why on stderr and exits 2.

use std::io::Write;
use std::time::Duration;

fn fail(what: &str, error: impl std::fmt::Display) -> ! {
    eprintln!("wasi-probe: {what}: {error}");
    std::process::exit(2);
}

fn main() {
    let mut steps = std::env::args().skip(1);
    while let Some(step) = steps.next() {
        let mut next = |what: &str| steps.next().unwrap_or_else(|| fail(what, "missing argument"));
        match step.as_str() {
            "print" => println!("{}", next("print")),
            "eprint" => eprintln!("{}", next("eprint")),
            "args" => println!("args: {:?}", std::env::args().collect::<Vec<_>>()),
            "env" => std::env::vars().for_each(|(k, v)| println!("{k}={v}")),
            "sleep" => std::thread::sleep(Duration::from_millis(next("sleep").parse().unwrap_or_else(|e| fail("sleep", e)))),
            "forever" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "tick" => {
                let every = Duration::from_millis(next("tick").parse().unwrap_or_else(|e| fail("tick", e)));
                for n in 0u64.. {
                    println!("tick {n}");
                    std::thread::sleep(every);
                }
            }
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "await" => {
                let path = next("await");
                while !std::path::Path::new(&path).exists() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            "open" => {
                let dir = next("open");
                let count: usize = next("open").parse().unwrap_or_else(|e| fail("open", e));
                let files: Vec<std::fs::File> = (0..count)
                    .map(|i| {
                        let path = format!("{dir}/open-{i}");
                        std::fs::File::create(&path).unwrap_or_else(|e| fail(&format!("open {path}"), e))
                    })
                    .collect();
                println!("holding {} open files", files.len());
                std::mem::forget(files);
            }
            "churn" => {
                let dir = next("churn");
                let count: usize = next("churn").parse().unwrap_or_else(|e| fail("churn", e));
                for i in 0..count {
                    let path = format!("{dir}/churn-{}", i % 8);
                    std::fs::write(&path, i.to_string()).unwrap_or_else(|e| fail(&format!("churn {path}"), e));
                }
                println!("opened and closed {count} files");
            }
            "exit" => std::process::exit(next("exit").parse().unwrap_or_else(|e| fail("exit", e))),
            "trap" => core::arch::wasm32::unreachable(),
            "write" => {
                let path = next("write");
                let text = next("write");
                std::fs::write(&path, text).unwrap_or_else(|e| fail(&format!("write {path}"), e));
            }
            "read" => {
                let path = next("read");
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| fail(&format!("read {path}"), e));
                println!("{text}");
            }
            "ls" => {
                let dir = next("ls");
                let mut names: Vec<String> = std::fs::read_dir(&dir)
                    .unwrap_or_else(|e| fail(&format!("ls {dir}"), e))
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                println!("{}", names.join(" "));
            }
            "alloc" => {
                let mib: usize = next("alloc").parse().unwrap_or_else(|e| fail("alloc", e));
                let block = vec![1u8; mib << 20];
                println!("allocated {} MiB", std::hint::black_box(&block).len() >> 20);
                std::mem::forget(block);
            }
            "connect" => {
                use std::io::{BufRead, BufReader};
                let target = next("connect");
                let mut stream = std::net::TcpStream::connect(&target)
                    .unwrap_or_else(|e| fail(&format!("connect {target}"), e));
                stream
                    .write_all(b"GET / HTTP/1.0\r\n\r\n")
                    .unwrap_or_else(|e| fail(&format!("write to {target}"), e));
                let mut status = String::new();
                BufReader::new(stream)
                    .read_line(&mut status)
                    .unwrap_or_else(|e| fail(&format!("read from {target}"), e));
                println!("{}", status.trim_end());
            }
            "fill" => {
                let path = next("fill");
                let mib: usize = next("fill").parse().unwrap_or_else(|e| fail("fill", e));
                std::fs::write(&path, vec![b'x'; mib << 20]).unwrap_or_else(|e| fail(&format!("fill {path}"), e));
                println!("filled {path} with {mib} MiB");
            }
            "spew" => {
                let mib: usize = next("spew").parse().unwrap_or_else(|e| fail("spew", e));
                let block = [b'x'; 64 << 10];
                let mut out = std::io::stdout().lock();
                for _ in 0..mib * 16 {
                    out.write_all(&block).unwrap_or_else(|e| fail("spew", e));
                }
                out.write_all(b"\n").unwrap_or_else(|e| fail("spew", e));
            }
            "follow" => {
                let path = next("follow");
                let mut last = None;
                loop {
                    let text = std::fs::read_to_string(&path).ok();
                    if text != last {
                        println!("{path}: {}", text.as_deref().unwrap_or("<missing>"));
                        let _ = std::io::stdout().flush();
                        last = text;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            other => fail("unknown step", other),
        }
        let _ = std::io::stdout().flush();
    }
}
