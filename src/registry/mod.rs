//! The schema registry's REST API as Confluent defines it, which Apicurio's compatible API and
//! Redpanda's registry serve too: `GET /schemas/ids/{id}`, one blocking request per schema id the
//! service has not seen, over HTTP or HTTPS (OpenSSL), with basic auth. The transform stage keeps
//! what it learns.
//!
//! A plain HTTP/1.1 client of a few dozen lines, not an HTTP crate: this is one GET, and the ones
//! that do it bring a URL and IDNA stack with them. `serve` is a registry in process, for the
//! demo and the tests.

pub mod serve;

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use base64::Engine;
use openssl::ssl::{SslConnector, SslMethod, SslStream};
use serde::Deserialize;

use crate::config::RegistrySettings;

/// What the registry says of a schema id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The schema's text and type (`AVRO` when the registry leaves it out).
    Schema { schema_type: String, text: String },
    /// The registry does not know the id (HTTP 404, error 40403).
    NotFound(String),
}

/// The registry could not be asked, or did not answer as a registry: retried, never a rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage(pub String);

/// A client for one registry.
pub struct Registry {
    tls: Option<SslConnector>,
    host: String,
    port: u16,
    path: String,
    authorization: Option<String>,
    timeout: Duration,
}

/// The answer to `GET /schemas/ids/{id}`; newer registries add members, which are ignored.
#[derive(Deserialize)]
struct SchemaString {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct ErrorMessage {
    error_code: Option<i64>,
    message: Option<String>,
}

/// Longest answer read: a schema is kilobytes.
const MAX_RESPONSE: u64 = 16 << 20;

impl Registry {
    pub fn new(settings: &RegistrySettings) -> Result<Registry, String> {
        let (scheme, rest) = settings
            .url
            .split_once("://")
            .ok_or_else(|| format!("{} is not a URL", settings.url))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let https = scheme == "https";
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{authority}: the port is not a number"))?,
            ),
            _ => (authority, if https { 443 } else { 80 }),
        };
        let tls = if https {
            let mut builder =
                SslConnector::builder(SslMethod::tls_client()).map_err(|e| format!("TLS: {e}"))?;
            if let Some(ca) = &settings.ca_file {
                builder
                    .set_ca_file(ca)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            if let Some((cert, key)) = &settings.client_cert {
                builder
                    .set_certificate_chain_file(cert)
                    .map_err(|e| format!("{}: {e}", cert.display()))?;
                builder
                    .set_private_key_file(key, openssl::ssl::SslFiletype::PEM)
                    .map_err(|e| format!("{}: {e}", key.display()))?;
                builder.check_private_key().map_err(|e| {
                    format!("{} does not match {}: {e}", key.display(), cert.display())
                })?;
            }
            Some(builder.build())
        } else {
            None
        };
        Ok(Registry {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            path: path.to_string(),
            authorization: settings.basic_auth.as_ref().map(|a| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(a)
                )
            }),
            timeout: settings.timeout,
        })
    }

    /// The schema registered under `id`.
    pub fn schema(&self, id: u32) -> Result<Answer, Outage> {
        let (status, body) = self
            .get(&format!("{}/schemas/ids/{id}", self.path))
            .map_err(Outage)?;
        let text = String::from_utf8_lossy(&body);
        match status {
            200 => {
                let s: SchemaString = serde_json::from_slice(&body).map_err(|e| {
                    Outage(format!(
                        "schema {id}: the registry's answer is not a schema ({e}): {}",
                        clip(&text)
                    ))
                })?;
                Ok(Answer::Schema {
                    schema_type: s.schema_type.unwrap_or_else(|| "AVRO".to_string()),
                    text: s.schema,
                })
            }
            404 => match serde_json::from_slice::<ErrorMessage>(&body) {
                Ok(ErrorMessage {
                    error_code: Some(40403),
                    message,
                }) => Ok(Answer::NotFound(
                    message.unwrap_or_else(|| format!("Schema {id} not found")),
                )),
                // A 404 of anything but the registry (a wrong path, a proxy) is an outage:
                // rejecting every message for it would be wrong.
                _ => Err(Outage(format!(
                    "schema {id}: HTTP 404 without the registry's error 40403 (is CDC_AUDIT_SCHEMA_REGISTRY_URL the registry?): {}",
                    clip(&text)
                ))),
            },
            _ => Err(Outage(format!(
                "schema {id}: HTTP {status}: {}",
                clip(&text)
            ))),
        }
    }

    /// One `GET`: the status and the body.
    fn get(&self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let where_ = format!("{}:{}", self.host, self.port);
        let addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("{where_}: {e}"))?;
        let mut last = format!("{where_}: no address");
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("{where_}: {e}"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        tcp.set_read_timeout(Some(self.timeout))
            .and_then(|()| tcp.set_write_timeout(Some(self.timeout)))
            .map_err(|e| format!("{where_}: {e}"))?;
        let mut stream: Box<dyn ReadWrite> = match &self.tls {
            Some(tls) => Box::new(
                tls.connect(&self.host, tcp)
                    .map_err(|e| format!("{where_}: TLS: {e}"))?,
            ),
            None => Box::new(tcp),
        };
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            where_.clone()
        };
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/vnd.schemaregistry.v1+json, application/json\r\nUser-Agent: cdc-audit/{}\r\nConnection: close\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(auth) = &self.authorization {
            request.push_str("Authorization: ");
            request.push_str(auth);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("{where_}: {e}"))?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut response)
            .map_err(|e| format!("{where_}: {e}"))?;
        parse_response(&response).map_err(|e| format!("{where_}: {e}"))
    }
}

trait ReadWrite: Read + Write {}
impl ReadWrite for TcpStream {}
impl ReadWrite for SslStream<TcpStream> {}

/// An HTTP/1.1 response read to its end: the status and the body (content length or chunked).
fn parse_response(response: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer is not HTTP: no end of headers")?;
    let head = String::from_utf8_lossy(&response[..end]);
    let body = &response[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("the answer is not HTTP: no status line")?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            }
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else {
        match length {
            Some(n) if n <= body.len() => body[..n].to_vec(),
            Some(n) => {
                return Err(format!(
                    "the answer ended after {} of {n} bytes",
                    body.len()
                ))
            }
            None => body.to_vec(),
        }
    };
    Ok((status, body))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without its size line")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("a chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or("the answer ended inside a chunk")?;
        out.extend_from_slice(chunk);
        body = body
            .get(size + 2..)
            .ok_or("the answer ended after a chunk")?;
    }
}

/// The start of an answer, for an error message.
fn clip(text: &str) -> String {
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_a_length_or_in_chunks_read_the_same() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"schema\":\"1\"}x";
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"sch\r\n9;ext=1\r\nema\":\"1\"}\r\n0\r\n\r\n";
        let want = (200, b"{\"schema\":\"1\"}".to_vec());
        assert_eq!(parse_response(plain).unwrap(), want);
        assert_eq!(parse_response(chunked).unwrap(), want);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n").is_err());
    }
}
