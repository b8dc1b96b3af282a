//! Files and images in messages: `file` parts with text-like types are decoded and inlined
//! as text with their filename; `data:` image URLs are checked; everything else is refused
//! with a message that names the type. Pure: limits come in as arguments.

use base64::Engine;

use crate::surface::chat::request::{ChatRequest, Content, Part};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest decoded file inlined as text.
    pub max_file_bytes: usize,
    /// Largest decoded `data:` image.
    pub max_image_bytes: usize,
}

/// Why a part was refused: the JSON path of the part, the status, the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartError {
    pub param: String,
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

const TEXT_TYPES: &[&str] = &[
    "application/json",
    "application/x-ndjson",
    "application/jsonl",
    "application/xml",
    "application/yaml",
    "application/x-yaml",
    "application/csv",
    "application/markdown",
];
const TEXT_EXTENSIONS: &[&str] = &[
    "txt", "text", "md", "markdown", "csv", "tsv", "json", "jsonl", "ndjson", "yaml", "yml", "xml",
    "log", "ini", "toml",
];

/// Replace every `file` part with its inlined text, and check `data:` images.
pub fn resolve(req: &mut ChatRequest, limits: Limits) -> Result<(), PartError> {
    for (i, m) in req.messages.iter_mut().enumerate() {
        let Content::Parts(parts) = &mut m.content else {
            continue;
        };
        for (j, p) in parts.iter_mut().enumerate() {
            let param = format!("messages[{i}].content[{j}]");
            match p {
                Part::File {
                    filename,
                    file_data,
                    file_id,
                } => {
                    let text = inline(
                        filename.as_deref(),
                        file_data.as_deref(),
                        file_id.as_deref(),
                        limits,
                    )
                    .map_err(|(status, code, message)| PartError {
                        param: param.clone(),
                        status,
                        code,
                        message,
                    })?;
                    *p = Part::Text(text);
                }
                Part::Image { url, .. } => {
                    check_image(url, limits).map_err(|(status, code, message)| PartError {
                        param,
                        status,
                        code,
                        message,
                    })?
                }
                _ => {}
            }
        }
    }
    Ok(())
}

type Refusal = (u16, &'static str, String);

fn unsupported(what: String) -> Refusal {
    (400, "unsupported_content_type", what)
}

/// `data:<mime>[;params][;base64],<payload>` → (mime, bytes).
fn data_url(url: &str) -> Result<(String, Vec<u8>), Refusal> {
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| unsupported("expected a data: URL".to_string()))?;
    let (meta, payload) = rest.split_once(',').ok_or_else(|| {
        (
            400,
            "invalid_request",
            "the data: URL has no `,`".to_string(),
        )
    })?;
    let mut fields = meta.split(';');
    let mime = fields.next().unwrap_or("").trim().to_ascii_lowercase();
    let base64 = fields.any(|f| f.eq_ignore_ascii_case("base64"));
    let bytes = if base64 {
        decode_b64(payload)?
    } else {
        percent_decode(payload)
    };
    Ok((mime, bytes))
}

fn decode_b64(s: &str) -> Result<Vec<u8>, Refusal> {
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(
            clean.trim_end_matches('=').to_string()
                + &"=".repeat((4 - clean.trim_end_matches('=').len() % 4) % 4),
        )
        .map_err(|_| {
            (
                400,
                "invalid_request",
                "the file data is not valid base64".to_string(),
            )
        })
}

/// The first image part of the request, as (message, part) indices.
pub fn first_image(req: &ChatRequest) -> Option<(usize, usize)> {
    req.messages
        .iter()
        .enumerate()
        .find_map(|(i, m)| match &m.content {
            Content::Parts(parts) => parts
                .iter()
                .position(|p| matches!(p, Part::Image { .. }))
                .map(|j| (i, j)),
            _ => None,
        })
}

/// Decode `%XX` escapes (in `data:` URLs without base64, and in paths: model ids contain `/`).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: u8| (c as char).to_digit(16);
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn is_text_like(mime: &str, filename: Option<&str>) -> bool {
    if mime.starts_with("text/")
        || TEXT_TYPES.contains(&mime)
        || mime.ends_with("+json")
        || mime.ends_with("+xml")
    {
        return true;
    }
    let generic = mime.is_empty() || mime == "application/octet-stream";
    generic
        && filename
            .and_then(|f| f.rsplit_once('.'))
            .is_some_and(|(_, ext)| TEXT_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

fn inline(
    filename: Option<&str>,
    file_data: Option<&str>,
    file_id: Option<&str>,
    limits: Limits,
) -> Result<String, Refusal> {
    let Some(data) = file_data else {
        return Err(match file_id {
            Some(_) => unsupported(
                "`file_id` references are not supported (this proxy keeps no uploads); send the content as `file_data`".to_string(),
            ),
            None => (400, "invalid_request", "a file part needs `file_data`".to_string()),
        });
    };
    let (mime, bytes) = if data.starts_with("data:") {
        data_url(data)?
    } else {
        (String::new(), decode_b64(data)?)
    };
    if !is_text_like(&mime, filename) {
        let shown = if mime.is_empty() {
            "unknown"
        } else {
            mime.as_str()
        };
        let name = filename.unwrap_or("(unnamed)");
        return Err(unsupported(format!(
            "file {name} has type {shown}; only text-like files (text/*, JSON, Markdown, CSV, YAML, XML) can be sent upstream"
        )));
    }
    if bytes.len() > limits.max_file_bytes {
        return Err((
            413,
            "file_too_large",
            format!(
                "file {} is {} bytes; the limit is {} (limits.max_file_bytes)",
                filename.unwrap_or("(unnamed)"),
                bytes.len(),
                limits.max_file_bytes
            ),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        (
            400,
            "invalid_request",
            format!(
                "file {} is not valid UTF-8 text",
                filename.unwrap_or("(unnamed)")
            ),
        )
    })?;
    let name = filename.unwrap_or("attachment");
    let kind = if mime.is_empty() {
        String::new()
    } else {
        format!(" type=\"{mime}\"")
    };
    Ok(format!("<file name=\"{name}\"{kind}>\n{text}\n</file>"))
}

fn check_image(url: &str, limits: Limits) -> Result<(), Refusal> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(());
    }
    if !url.starts_with("data:") {
        return Err(unsupported(
            "image_url.url must be an http(s) or data: URL".to_string(),
        ));
    }
    let (mime, bytes) = data_url(url)?;
    if !mime.starts_with("image/") {
        return Err(unsupported(format!(
            "image_url has type {mime}, not an image type"
        )));
    }
    if bytes.len() > limits.max_image_bytes {
        return Err((
            413,
            "image_too_large",
            format!(
                "the image is {} bytes; the limit is {} (limits.max_image_bytes)",
                bytes.len(),
                limits.max_image_bytes
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_file_bytes: 1024,
        max_image_bytes: 64,
    };

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn req(parts: serde_json::Value) -> ChatRequest {
        let body =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": parts}]});
        ChatRequest::parse(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn text_files_are_inlined_with_their_name() {
        for (name, url) in [
            (
                "notes.md",
                format!(
                    "data:text/markdown;base64,{}",
                    b64("# Title\nhéllo".as_bytes())
                ),
            ),
            (
                "data.csv",
                format!("data:text/csv;base64,{}", b64(b"a,b\n1,2")),
            ),
            (
                "cfg.json",
                format!("data:application/json;base64,{}", b64(br#"{"a":1}"#)),
            ),
            ("readme.txt", b64(b"plain base64, no data: prefix")),
            (
                "raw.yaml",
                format!("data:application/octet-stream;base64,{}", b64(b"k: v")),
            ),
        ] {
            let mut r = req(
                serde_json::json!([{"type": "text", "text": "see"}, {"type": "file", "file": {"filename": name, "file_data": url}}]),
            );
            resolve(&mut r, LIMITS).unwrap();
            let text = r.messages[0].content.text();
            assert!(text.starts_with("see\n<file name=\""), "{text}");
            assert!(text.contains(name) && text.ends_with("</file>"), "{text}");
        }
        let mut r = req(
            serde_json::json!([{"type": "file", "file": {"filename": "n.md", "file_data": format!("data:text/markdown;base64,{}", b64("# Title\nhéllo".as_bytes()))}}]),
        );
        resolve(&mut r, LIMITS).unwrap();
        assert_eq!(
            r.messages[0].content.text(),
            "<file name=\"n.md\" type=\"text/markdown\">\n# Title\nhéllo\n</file>"
        );
    }

    #[test]
    fn other_files_are_refused_naming_the_type() {
        let cases = [
            (
                serde_json::json!({"filename": "a.pdf", "file_data": format!("data:application/pdf;base64,{}", b64(b"%PDF"))}),
                "application/pdf",
                400,
            ),
            (
                serde_json::json!({"filename": "a.bin", "file_data": b64(b"\x00\x01")}),
                "unknown",
                400,
            ),
            (serde_json::json!({"file_id": "file-abc"}), "file_id", 400),
            (
                serde_json::json!({"filename": "big.txt", "file_data": format!("data:text/plain;base64,{}", b64(&[b'x'; 2048]))}),
                "limits.max_file_bytes",
                413,
            ),
            (
                serde_json::json!({"filename": "bad.txt", "file_data": format!("data:text/plain;base64,{}", b64(&[0xff, 0xfe]))}),
                "UTF-8",
                400,
            ),
            (
                serde_json::json!({"filename": "x.txt", "file_data": "data:text/plain;base64,@@@"}),
                "base64",
                400,
            ),
        ];
        for (file, needle, status) in cases {
            let mut r = req(
                serde_json::json!([{"type": "text", "text": "x"}, {"type": "file", "file": file}]),
            );
            let e = resolve(&mut r, LIMITS).unwrap_err();
            assert_eq!(
                (e.status, e.param.as_str()),
                (status, "messages[0].content[1]"),
                "{e:?}"
            );
            assert!(e.message.contains(needle), "{e:?}");
        }
    }

    #[test]
    fn images_are_checked() {
        let ok = format!("data:image/png;base64,{}", b64(b"\x89PNG"));
        for url in [ok.as_str(), "https://example.com/a.png", "http://x/y.jpg"] {
            let mut r = req(serde_json::json!([{"type": "image_url", "image_url": {"url": url}}]));
            resolve(&mut r, LIMITS).unwrap();
        }
        let big = format!("data:image/png;base64,{}", b64(&[0u8; 100]));
        let notimg = format!("data:text/plain;base64,{}", b64(b"x"));
        for (url, status) in [
            (big.as_str(), 413),
            (notimg.as_str(), 400),
            ("ftp://x/y.png", 400),
            ("data:image/png;base64,!!", 400),
        ] {
            let mut r = req(serde_json::json!([{"type": "image_url", "image_url": {"url": url}}]));
            assert_eq!(resolve(&mut r, LIMITS).unwrap_err().status, status, "{url}");
        }
    }
}
