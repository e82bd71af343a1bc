//! chainboot-http
