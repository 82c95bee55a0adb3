//! A TCP proxy between the service and PostgreSQL that a test can cut and restore: the portable
//! way to make the database go away and come back mid-stream.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<port> to `target` (host:port).
    pub fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (d, o, st) = (down.clone(), open.clone(), stalled.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    drop(client); // cut: the connection closes at once
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut open = o.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    st.clone(),
                );
                pipe(server, client, st.clone());
            }
        });
        Proxy {
            port,
            down,
            stalled,
            open,
        }
    }

    /// Closes every open connection and refuses new ones.
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// Keeps connections open but forwards nothing: a database that hangs.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// A connection string like `url` that goes through the proxy.
    pub fn url(&self, url: &str) -> String {
        let c: postgres::Config = url.parse().unwrap();
        let mut out = format!("host=127.0.0.1 port={}", self.port);
        if let Some(user) = c.get_user() {
            out.push_str(&format!(" user={user}"));
        }
        if let Some(pw) = c.get_password() {
            out.push_str(&format!(" password={}", String::from_utf8_lossy(pw)));
        }
        if let Some(db) = c.get_dbname() {
            out.push_str(&format!(" dbname={db}"));
        }
        out
    }
}

/// The server's host:port from a connection string (TCP only).
pub fn target(url: &str) -> String {
    let c: postgres::Config = url.parse().unwrap();
    let host = match c.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_string(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

fn pipe(mut from: TcpStream, mut to: TcpStream, stalled: Arc<AtomicBool>) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            while stalled.load(Ordering::SeqCst) {
                thread::sleep(std::time::Duration::from_millis(20));
            }
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
