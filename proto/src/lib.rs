//! Generated protocol types and gRPC stubs for ringkv (`ringkv.v1`).
//!
//! This crate owns the wire format only: no behaviour lives here. The
//! `.proto` source is `proto/ringkv/v1/ringkv.proto`; read it for the meaning
//! of every field.

/// `ringkv.v1`: the Kv, Admin and RaftTransport services and their messages.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ringkv.v1");
}

/// Encoded `FileDescriptorSet` of `ringkv.v1`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ringkv_descriptor");

/// Name of the trailer that carries the error code name on failed calls.
pub const ERROR_CODE_METADATA_KEY: &str = "ringkv-error-code";

/// `google.rpc.Status`, the standard payload of the `grpc-status-details-bin`
/// trailer. ringkv puts one [`v1::ErrorDetail`] in its `details`, so generic
/// gRPC tools (grpcurl, grpc-go) read the status correctly and ringkv clients
/// find the machine-readable detail.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<RpcAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// Type URL of [`v1::ErrorDetail`] inside [`RpcStatus::details`].
pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/ringkv.v1.ErrorDetail";

/// Encodes the status details carrying `detail`, for `grpc_code`.
pub fn encode_status_details(grpc_code: i32, detail: &v1::ErrorDetail) -> Vec<u8> {
    use prost::Message;
    RpcStatus {
        code: grpc_code,
        message: detail.message.clone(),
        details: vec![RpcAny {
            type_url: ERROR_DETAIL_TYPE_URL.to_string(),
            value: detail.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

/// The [`v1::ErrorDetail`] inside a status's details bytes, if any.
pub fn decode_error_detail(status_details: &[u8]) -> Option<v1::ErrorDetail> {
    use prost::Message;
    let st = RpcStatus::decode(status_details).ok()?;
    let any = st.details.iter().find(|a| a.type_url == ERROR_DETAIL_TYPE_URL)?;
    v1::ErrorDetail::decode(any.value.as_slice()).ok()
}

/// The crc32 an `ExportShardChunk` carries: over its pairs in order, each
/// as `u32-BE(len key) key u32-BE(len value) value`.
pub fn export_chunk_crc(pairs: &[v1::KeyValue]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in pairs {
        h.update(&(p.key.len() as u32).to_be_bytes());
        h.update(&p.key);
        h.update(&(p.value.len() as u32).to_be_bytes());
        h.update(&p.value);
    }
    h.finalize()
}
