//! The wire: the generated `jobledger.v1` types, client and server, and what every
//! side of the wire shares: the services' method list read from the descriptors, gRPC
//! status code names, JSON ⇄ `google.protobuf.Struct`, and the proto3 JSON mapping of
//! whole messages (`reflect`, for the HTTP API).

pub mod json;
pub(crate) mod reflect;

mod generated {
    #![allow(clippy::all)]
    tonic::include_proto!("jobledger.v1");
}
pub use generated::*;

/// The encoded descriptors of the contract, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/jobledger_descriptor.bin"));

/// A gRPC method of a service described by a descriptor set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// `package.Service`, e.g. `jobledger.v1.JobLedger`.
    pub service: String,
    /// `CreateJob`.
    pub name: String,
    /// Server or client streaming.
    pub streaming: bool,
}

impl Method {
    /// The request path, `/package.Service/Method`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.name)
    }
}

/// Every method of every service in an encoded `FileDescriptorSet` (one of the
/// `FILE_DESCRIPTOR_SET`s): read from the descriptors, so a new RPC needs no list kept
/// by hand.
pub fn methods(file_descriptor_set: &[u8]) -> Result<Vec<Method>, prost::DecodeError> {
    let set = <prost_types::FileDescriptorSet as prost::Message>::decode(file_descriptor_set)?;
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let service_name = match file.package() {
                "" => service.name().to_owned(),
                package => format!("{package}.{}", service.name()),
            };
            for method in &service.method {
                methods.push(Method {
                    service: service_name.clone(),
                    name: method.name().to_owned(),
                    streaming: method.server_streaming() || method.client_streaming(),
                });
            }
        }
    }
    Ok(methods)
}

/// The canonical name of a gRPC status code (`INVALID_ARGUMENT`), as clients print it
/// and the metrics label it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_the_descriptors() {
        let paths: Vec<String> = methods(FILE_DESCRIPTOR_SET)
            .unwrap()
            .iter()
            .map(Method::path)
            .collect();
        assert!(paths.contains(&"/jobledger.v1.JobLedger/CreateJob".to_owned()));
        let stream = methods(FILE_DESCRIPTOR_SET)
            .unwrap()
            .into_iter()
            .find(|m| m.name == "StreamEvents")
            .unwrap();
        assert!(stream.streaming);
        assert!(methods(b"\xff").is_err());
    }

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(code_name(tonic::Code::from_i32(99)), "UNKNOWN");
    }
}
