//! The OpenAI chat surface (`POST /v1/chat/completions`): the request we accept
//! ([`request`]), its conversion to the neutral request ([`turns`]), file and image parts
//! ([`files`]) and the `chat.completion.chunk` encoder ([`stream`]).

pub mod files;
pub mod request;
pub mod stream;
pub mod turns;
