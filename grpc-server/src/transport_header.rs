//! A tower layer that names the server's transport on every response ([`TRANSPORT_HEADER`]), so
//! clients such as `brindle node status` report what the server speaks.

use brindle_grpc::{TRANSPORT_HEADER, Transport};
use tonic::codegen::http::{HeaderValue, Response};
use tower::util::MapResponseLayer;

/// The layer for a server speaking `transport`.
pub fn transport_header_layer<B>(
    transport: Transport,
) -> MapResponseLayer<impl Fn(Response<B>) -> Response<B> + Clone> {
    let value = HeaderValue::from_static(transport.header_value());
    MapResponseLayer::new(move |mut response: Response<B>| {
        response.headers_mut().insert(TRANSPORT_HEADER, value.clone());
        response
    })
}
