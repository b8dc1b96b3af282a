//! Mock upstreams, runnable by hand: K2Think (default; K2 Horizon unless `--personality
//! k2think` for the old host, `--legacy-host` for its guest path as it answers today: 400)
//! or Z.AI (`--provider zai`, chat.z.ai: guests, FE version, signed v2 completions).
//!
//! Built only with the `mock` feature (the production `k2proxy` binary leaves the mocks out):
//!
//! cargo run --features mock --bin k2mock -- --listen 127.0.0.1:9100 --account me@example.com:secret
//! curl -N http://127.0.0.1:9100/api/chat/completions -H 'Authorization: Bearer tok;pace_ms=100' \
//!   -d '{"model":"MBZUAI-IFM/K2-Think-v2","stream":true,"messages":[{"role":"user","content":"hi"}]}'
//!
//! cargo run --features mock --bin k2mock -- --provider zai --listen 127.0.0.1:9200 --require-captcha
//! curl http://127.0.0.1:9200/api/v1/auths/      # a guest token

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use k2proxy::mock::zai::ZaiMockConfig;
use k2proxy::mock::{Account, Delivery, Form, MockConfig, MockUpstream, UpstreamConfig};

const DIRECTIVES_HELP: &str = "\
DIRECTIVES (later layers win):
  1. these flags / config defaults
  2. the last user message: [[mock: key=value; key=value]] anywhere in the text
  3. the bearer token: NAME;key=value;key=value   (e.g. tok-b;fault=429;retry_after=3)
  Unknown keys and bad values are ignored.

  form=v1|v2|v2-answer|v2-noopen|details|details-bare|none
                                                 markup (default v1; horizon: details-bare)
  delivery=cumulative|incremental|delta          SSE payload shape (default cumulative)
  end=done|marker|both|none|ragged               stream end (default both; horizon: ragged =
                                                 the done event, then a torn-down connection)
  task_id=true|false                             a leading task_id event (horizon: true)
  finish_chunk=true|false                        OpenAI finish chunk after done (horizon: true)
  thinking_rule=true|false                       400 unless each assistant message has a string
                                                 thinking field (horizon: true)
  effort_closers=true|false                      v2 forms close with </think_fast> (medium) or
                                                 </think_faster> (low) (horizon: true)
  usage=true|false                               usage event / field (default true)
  chunk=N                                        chars per content event (default 8)
  pace_ms=N                                      sleep between events (default 0)
  crlf=true|false                                \\r\\n line ends (default false)
  split=N                                        write each event in N-byte frames (default 0 = off)
  gate=NAME gate_after=K                         after K events wait for POST /__mock/gates/NAME/open (K default 1)
  fault=401|403|429|500|502|503|<4xx/5xx>|cut|slowhead|garbage|html|close|stall|error_event|detail
  retry_after=N|date:N                           Retry-After of a 429 (default 2)
  cut_after=N                                    events before cut/stall/error_event (default 2)
  slowhead_ms=N (default 3000)  stall_ms=N (default 60000)
  linger_ms=N (default 0: keep the body open N ms after the last event)
  reasoning_words=N answer_words=N               filler words (default 0)
  duration=N                                     seconds in v2/details markup (default 3)
  json=compact|python                            python = json.dumps style with \\uXXXX escapes

CONTROL:
  GET /__mock/requests   DELETE /__mock/requests   POST /__mock/gates/NAME/open

Z.AI (--provider zai) DIRECTIVES, same three layers (token: <jwt>;key=value;...):
  edit=rune|byte            edit_index counts characters (GFA) or bytes (GO-DOC) (default rune)
  edit_at=start|middle      only the thinking->answer transition rewrites (from 0), or also a
                            second edit halfway through the answer (default start)
  done_marker=on|off        final data: [DONE] (default on)
  envelope=wrapped|bare     {\"type\":\"chat:completion\",\"data\":{...}} or the bare data object
  thinking=auto|on|off      stream the thinking phase (auto: features.enable_thinking)
  piece=N                   characters per delta_content (default 6)
  chunk=N                   write each event in N-byte pieces (default 0 = whole events)
  delay_ms=N                sleep between events (default 0)
  search=on|off             answer carries 【turn0search0】 markers
  tool=gfa|json|k2|none     answer with a <<<TOOL_CALL>>> block, a {\"tool_calls\":...} object,
                            or k2proxy's trigger + <function_calls> block
  tool_name=NAME tool_args=BASE64URL(JSON object)
  fault=waf|405|429|401|500|<4xx/5xx>|concurrency|inline_error|nested_error|cut
  retry_after=N (default 5)  cut_after=N  gate=NAME gate_after=K  duration=N
  reasoning_words=N answer_words=N

Z.AI CONTROL: also POST /__mock/fe-version/prod-fe-X.Y.Z";

#[derive(Parser, Debug)]
#[command(name = "k2mock", about = "Mock upstreams (K2Think / K2 Horizon, Z.AI) for k2proxy tests and benches", after_help = DIRECTIVES_HELP)]
struct Args {
    /// Which upstream to imitate: `k2think` (K2Think / K2 Horizon) or `zai` (chat.z.ai).
    #[arg(long, default_value = "k2think", value_parser = ["k2think", "zai"])]
    provider: String,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Which upstream to imitate: `horizon` (chat.ifm.ai since 2026-09: K2 Horizon, the
    /// details + bare-answer form, task_id events, a finish chunk after done, a ragged end,
    /// the thinking-field rule) or `k2think` (www.k2think.ai as it answered before).
    #[arg(long, default_value = "horizon", value_parser = ["horizon", "k2think"])]
    personality: String,
    /// The old host as the newest clients report it: the guest chat path answers 400.
    #[arg(long)]
    legacy_host: bool,
    /// Default markup form (default: the personality's).
    #[arg(long)]
    form: Option<String>,
    /// Default delivery.
    #[arg(long, default_value = "cumulative")]
    delivery: String,
    /// Default pause between SSE events, in ms.
    #[arg(long, default_value_t = 0)]
    pace_ms: u64,
    /// Default characters per content event.
    #[arg(long, default_value_t = 8)]
    chunk: usize,
    /// More default directives, `key=value;key=value`.
    #[arg(long, default_value = "")]
    directives: String,
    /// Do not record requests (for benches).
    #[arg(long)]
    no_record: bool,
    /// Sign-in account `email:password` (repeatable).
    #[arg(long = "account", value_name = "EMAIL:PASSWORD")]
    accounts: Vec<String>,
    /// Accept only tokens issued by sign-in or given with --valid-token.
    #[arg(long)]
    strict_tokens: bool,
    /// A token name accepted with --strict-tokens (repeatable).
    #[arg(long = "valid-token", value_name = "TOKEN")]
    valid_tokens: Vec<String>,
    /// Model ids served (repeatable; default: IFM/K2-Horizon-375B-A23B with the horizon
    /// personality, MBZUAI-IFM/K2-Think-v2 and MBZUAI-IFM/K2-Think with k2think; glm-4.7,
    /// glm-5, GLM-5-Turbo, GLM-5.1 and glm-4.6v with zai).
    #[arg(long = "model", value_name = "ID")]
    models: Vec<String>,
    /// (zai) The front-end version to start with.
    #[arg(long, default_value = k2proxy::mock::zai::DEFAULT_FE_VERSION)]
    fe_version: String,
    /// (zai) A stale X-FE-Version gets the inline 426 in a 200 SSE instead of HTTP 426.
    #[arg(long)]
    fe_inline_426: bool,
    /// (zai) Require captcha_verify_param in the completion body.
    #[arg(long)]
    require_captcha: bool,
    /// (zai) An accepted captcha proof (repeatable; none given: any non-empty proof).
    #[arg(long = "captcha-proof", value_name = "PROOF")]
    captcha_proofs: Vec<String>,
    /// (zai) Require a chat_id made by POST /api/v1/chats/new with the same token.
    #[arg(long)]
    require_chat: bool,
    /// (zai) A user token (role user) to accept, e.g. a JWT (repeatable).
    #[arg(long = "user-token", value_name = "TOKEN")]
    user_tokens: Vec<String>,
}

fn config(args: &Args) -> Result<MockConfig, String> {
    let base = if args.personality == "k2think" {
        MockConfig::default()
    } else {
        MockConfig::horizon()
    };
    let mut d = base.defaults.clone();
    if let Some(form) = &args.form {
        d.form = Form::parse(form).ok_or_else(|| format!("unknown form {form:?}"))?;
    }
    d.delivery = Delivery::parse(&args.delivery)
        .ok_or_else(|| format!("unknown delivery {:?}", args.delivery))?;
    d.pace_ms = args.pace_ms;
    d.chunk = args.chunk.max(1);
    d.apply(&args.directives);
    let mut accounts = Vec::new();
    for a in &args.accounts {
        let (email, password) = a
            .split_once(':')
            .ok_or_else(|| format!("--account wants email:password, got {a:?}"))?;
        accounts.push(Account::new(email, password));
    }
    let mut cfg = MockConfig {
        defaults: d,
        accounts,
        record: !args.no_record,
        strict_tokens: args.strict_tokens,
        valid_tokens: args.valid_tokens.clone(),
        legacy_guest_400: args.legacy_host,
        ..base
    };
    if !args.models.is_empty() {
        cfg.models = args.models.clone();
    }
    Ok(cfg)
}

fn zai_config(args: &Args) -> ZaiMockConfig {
    let base = ZaiMockConfig::default();
    let mut d = base.defaults.clone();
    if args.pace_ms > 0 {
        d.delay_ms = args.pace_ms;
    }
    d.apply(&args.directives);
    ZaiMockConfig {
        defaults: d,
        fe_version: args.fe_version.clone(),
        record: !args.no_record,
        models: if args.models.is_empty() {
            base.models.clone()
        } else {
            args.models.clone()
        },
        fe_inline_426: args.fe_inline_426,
        require_captcha: args.require_captcha,
        captcha_proofs: args.captcha_proofs.clone(),
        require_chat: args.require_chat,
        users: args.user_tokens.clone(),
        ..base
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = if args.provider == "zai" {
        UpstreamConfig::Zai(zai_config(&args))
    } else {
        match config(&args) {
            Ok(c) => UpstreamConfig::K2Think(c),
            Err(e) => {
                eprintln!("k2mock: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let server = match MockUpstream::start(args.listen, cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("k2mock: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    match &server {
        MockUpstream::K2Think(_) => println!("k2mock listening on {}", server.base_url()),
        MockUpstream::Zai(z) => println!(
            "k2mock (zai, {}) listening on {}",
            z.fe_version(),
            server.base_url()
        ),
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("k2mock: waiting for Ctrl-C failed: {e}");
    }
    server.shutdown().await;
    ExitCode::SUCCESS
}
