//! The pixiecore API as a boot backend (pixiecore's README.api.md): chainboot is the client.
//!
//! `GET <api>/v1/boot/<mac>`; a 200 with a JSON body `{kernel, initrd?, cmdline?, message?,
//! ipxe-script?}` boots the machine; any other status, a malformed body, a timeout or a
//! connection error means "this machine does not boot from the API" (pixiecore ignores the
//! machine; chainboot goes on to `[boot] default` and logs why).
//!
//! URLs in answers: absolute http(s) URLs; naked paths (`/kernel`), resolved against the API
//! server's scheme, host and port, not under the API path (`/foo` with `http://bar/baz` is
//! `http://bar/foo`); `file:///path` for files on the chainboot host. Like pixiecore, chainboot
//! relays http(s) assets itself instead of pointing the machine at them (the machine may sit
//! on a network that only reaches the boot server), and only for URLs the API gave for that
//! machine, so the relay is not an open proxy. In `cmdline`, pixiecore's Go-template function
//! `{{ URL "..." }}` is supported: it becomes a relayed URL; any other template syntax makes
//! the answer malformed.

use std::path::PathBuf;
use std::time::Duration;

use chainboot_machine::Mac;
use serde::Deserialize;

use crate::config::AssetRef;

/// Why the API did not give a boot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The API answered but said no (non-200): the machine is not to be booted by the API.
    #[error("boot API answered HTTP {0} for this machine")]
    Declined(u16),
    #[error("boot API unreachable: {0}")]
    Unreachable(String),
    #[error("boot API answer malformed: {0}")]
    Malformed(String),
}

/// The JSON a pixiecore API returns.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiAnswer {
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Vec<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, rename = "ipxe-script")]
    pub ipxe_script: Option<String>,
}

/// An API answer made ready to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiBoot {
    Kernel {
        kernel: AssetRef,
        initrd: Vec<AssetRef>,
        /// The cmdline with each `{{ URL "x" }}` replaced by `{URL:N}` where N indexes `urls`.
        cmdline: String,
        urls: Vec<AssetRef>,
        message: Option<String>,
    },
    /// pixiecore's "advanced, non-guaranteed" raw iPXE script, passed through.
    Script(String),
}

/// Largest answer read; a boot answer is a few hundred bytes.
const MAX_ANSWER: usize = 256 * 1024;

/// Asks the API about `mac`.
pub async fn ask(
    client: &reqwest::Client,
    api: &str,
    mac: Mac,
    timeout: Duration,
) -> Result<ApiBoot, ApiError> {
    let url = format!("{}/v1/boot/{mac}", api.trim_end_matches('/'));
    let fut = async {
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(ApiError::Declined(status));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| ApiError::Unreachable(format!("{url}: {e}")))?;
        if body.len() > MAX_ANSWER {
            return Err(ApiError::Malformed(format!(
                "answer larger than {MAX_ANSWER} bytes"
            )));
        }
        Ok(body)
    };
    let body = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ApiError::Unreachable(format!("{url}: no answer within {timeout:?}")))??;
    let answer: ApiAnswer =
        serde_json::from_slice(&body).map_err(|e| ApiError::Malformed(e.to_string()))?;
    interpret(api, answer)
}

/// Makes an answer ready to render (pure; tested directly).
pub fn interpret(api: &str, a: ApiAnswer) -> Result<ApiBoot, ApiError> {
    if let Some(script) = a.ipxe_script {
        if !script.trim_start().starts_with("#!ipxe") {
            return Err(ApiError::Malformed(
                "ipxe-script does not start with #!ipxe".into(),
            ));
        }
        return Ok(ApiBoot::Script(script));
    }
    let kernel = a
        .kernel
        .ok_or_else(|| ApiError::Malformed("no kernel".into()))?;
    let kernel = resolve_url(api, &kernel)?;
    let initrd = a
        .initrd
        .iter()
        .map(|u| resolve_url(api, u))
        .collect::<Result<Vec<_>, _>>()?;
    let (cmdline, urls) = expand_url_calls(api, a.cmdline.as_deref().unwrap_or(""))?;
    Ok(ApiBoot::Kernel {
        kernel,
        initrd,
        cmdline,
        urls,
        message: a.message,
    })
}

/// Resolves a URL from an answer as pixiecore does.
pub fn resolve_url(api: &str, u: &str) -> Result<AssetRef, ApiError> {
    let u = u.trim();
    if let Some(path) = u.strip_prefix("file://") {
        // pixiecore uses the URL's path: file:///x and file://host/x both mean /x.
        let path = match path.find('/') {
            Some(i) => &path[i..],
            None => {
                return Err(ApiError::Malformed(format!(
                    "`{u}`: file URL without a path"
                )))
            }
        };
        return Ok(AssetRef::Local(PathBuf::from(path)));
    }
    if u.starts_with("http://") || u.starts_with("https://") {
        reqwest::Url::parse(u).map_err(|e| ApiError::Malformed(format!("`{u}`: {e}")))?;
        return Ok(AssetRef::Proxy(u.to_string()));
    }
    if u.starts_with('/') {
        let base =
            reqwest::Url::parse(api).map_err(|e| ApiError::Malformed(format!("API URL: {e}")))?;
        // A naked path replaces the API URL's whole path (pixiecore: "not rooted within the
        // API path").
        let joined = base
            .join(u)
            .map_err(|e| ApiError::Malformed(format!("`{u}`: {e}")))?;
        return Ok(AssetRef::Proxy(joined.to_string()));
    }
    Err(ApiError::Malformed(format!(
        "`{u}`: expected an absolute URL, a /path on the API server, or file:///path"
    )))
}

/// Replaces pixiecore's `{{ URL "x" }}` calls in a cmdline with `{URL:N}` placeholders.
fn expand_url_calls(api: &str, cmdline: &str) -> Result<(String, Vec<AssetRef>), ApiError> {
    let mut out = String::new();
    let mut urls = Vec::new();
    let mut rest = cmdline;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| ApiError::Malformed("unclosed {{ in cmdline".into()))?;
        let inner = after[..end].trim();
        let arg = inner
            .strip_prefix("URL")
            .map(str::trim)
            .and_then(|a| a.strip_prefix('"'))
            .and_then(|a| a.strip_suffix('"'))
            .ok_or_else(|| {
                ApiError::Malformed(format!(
                    "cmdline template `{{{{{inner}}}}}`: only {{{{ URL \"...\" }}}} is supported"
                ))
            })?;
        urls.push(resolve_url(api, arg)?);
        out.push_str(&format!("{{URL:{}}}", urls.len() - 1));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok((out, urls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_resolve_as_pixiecore_does() {
        let api = "http://bar.com:9000/baz";
        assert_eq!(
            resolve_url(api, "/foo").unwrap(),
            AssetRef::Proxy("http://bar.com:9000/foo".into())
        );
        assert_eq!(
            resolve_url(api, "https://x/k").unwrap(),
            AssetRef::Proxy("https://x/k".into())
        );
        assert_eq!(
            resolve_url(api, "file:///mnt/data/kernel").unwrap(),
            AssetRef::Local("/mnt/data/kernel".into())
        );
        assert!(resolve_url(api, "kernel").is_err());
    }

    #[test]
    fn url_calls_in_cmdline_become_placeholders() {
        let (c, urls) = expand_url_calls(
            "http://a:1/api",
            r#"x=1 cfg={{ URL "/cloud" }} y={{URL "https://h/z"}}"#,
        )
        .unwrap();
        assert_eq!(c, "x=1 cfg={URL:0} y={URL:1}");
        assert_eq!(urls.len(), 2);
        assert!(expand_url_calls("http://a", "{{ .Foo }}").is_err());
        assert!(expand_url_calls("http://a", "{{ URL \"/x\" ").is_err());
    }

    #[test]
    fn malformed_answers_are_refused() {
        let a = |j: &str| interpret("http://a", serde_json::from_str(j).unwrap());
        assert!(a(r#"{"initrd": ["/i"]}"#).is_err(), "no kernel");
        assert!(a(r#"{"kernel": "/k", "initrd": ["i"]}"#).is_err());
        assert!(matches!(
            a(r##"{"ipxe-script": "#!ipxe\nexit\n"}"##),
            Ok(ApiBoot::Script(_))
        ));
        assert!(a(r#"{"kernel": "/k", "cmdline": "a=b", "message": "hi"}"#).is_ok());
    }
}
