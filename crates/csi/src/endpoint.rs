//! The plugin's endpoint as Kubernetes writes it: `unix:///csi/csi.sock`
//! (the `CSI_ENDPOINT` convention of every CSI driver's manifests). A bare
//! absolute path is taken as a Unix socket too; anything else (`tcp://`)
//! is refused: kubelet reaches node plugins only through a socket.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("{0:?} is not a Unix socket endpoint like unix:///csi/csi.sock")]
    NotUnix(String),
    #[error("{0:?}: the socket path must be absolute, as in unix:///csi/csi.sock")]
    Relative(String),
}

/// The socket path of `endpoint`.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf, EndpointError> {
    let path = if let Some(rest) = endpoint.strip_prefix("unix://") {
        rest
    } else if let Some(rest) = endpoint.strip_prefix("unix:") {
        rest
    } else if endpoint.contains("://") {
        return Err(EndpointError::NotUnix(endpoint.to_string()));
    } else {
        endpoint
    };
    if path.is_empty() || path.contains('\0') {
        return Err(EndpointError::NotUnix(endpoint.to_string()));
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(EndpointError::Relative(endpoint.to_string()));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_style_endpoints_give_their_socket_path() {
        assert_eq!(
            parse_endpoint("unix:///csi/csi.sock"),
            Ok(PathBuf::from("/csi/csi.sock"))
        );
        assert_eq!(
            parse_endpoint("unix:/csi/csi.sock"),
            Ok(PathBuf::from("/csi/csi.sock"))
        );
        assert_eq!(
            parse_endpoint("/var/lib/kubelet/plugins/dfcache.d7y.io/csi.sock"),
            Ok(PathBuf::from(
                "/var/lib/kubelet/plugins/dfcache.d7y.io/csi.sock"
            ))
        );
    }

    #[test]
    fn other_endpoints_are_refused_with_the_reason() {
        assert!(matches!(
            parse_endpoint("tcp://127.0.0.1:10000"),
            Err(EndpointError::NotUnix(_))
        ));
        assert!(matches!(
            parse_endpoint("unix://"),
            Err(EndpointError::NotUnix(_))
        ));
        assert!(matches!(
            parse_endpoint("unix://csi.sock"),
            Err(EndpointError::Relative(_))
        ));
        assert!(matches!(
            parse_endpoint("csi.sock"),
            Err(EndpointError::Relative(_))
        ));
    }
}
