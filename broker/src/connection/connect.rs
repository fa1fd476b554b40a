//! The CONNECT phase: admission, authentication, the session attached,
//! CONNACK; or a refusal with its reason code.

use super::*;

fn connack_text(code: ConnectReturnCode) -> &'static str {
    use ConnectReturnCode as C;
    match code {
        C::BadUserNamePassword => "bad user name or password",
        C::NotAuthorized => "not authorized to connect",
        C::ServerBusy => "server at its connection limit",
        C::ClientIdentifierNotValid => "empty client id needs clean session",
        C::BadAuthenticationMethod => "enhanced authentication is not supported",
        C::TopicNameInvalid => "invalid will topic",
        C::ServerUnavailable => "server unavailable",
        _ => "refused",
    }
}

/// Reads CONNECT and attaches the session, or refuses the connection.
pub(super) async fn admit<T: Transport>(
    broker: Arc<Broker>,
    t: T,
    peer: SocketAddr,
    admitted: bool,
) -> Option<Box<Conn<T>>> {
    Metrics::inc(&broker.metrics.connections_total);
    if !admitted {
        Metrics::inc(&broker.metrics.connects_refused);
        tracing::warn!(%peer, "max_connections reached; refusing");
        refuse_busy(&broker, t, peer).await;
        return None;
    }
    accept(broker, t, peer).await
}

/// Reads CONNECT (within the connect timeout) and refuses it with
/// "server busy".
async fn refuse_busy<T: Transport>(broker: &Broker, mut t: T, peer: SocketAddr) {
    let timeout = Duration::from_secs(broker.config.limits.connect_timeout_secs);
    let max = broker.config.limits.max_packet_size as usize;
    let mut buf = BytesMut::new();
    if let Ok(Ok((version, _))) =
        tokio::time::timeout(timeout, read_connect(&mut t, &mut buf, max)).await
    {
        let _ = refuse(&mut t, version, ConnectReturnCode::ServerBusy).await;
    } else {
        tracing::debug!(%peer, "refused connection sent no valid CONNECT");
    }
    t.close().await;
}

/// Reads and answers CONNECT. `None` if the connection was refused.
async fn accept<T: Transport>(
    broker: Arc<Broker>,
    mut t: T,
    peer: SocketAddr,
) -> Option<Box<Conn<T>>> {
    let timeout = Duration::from_secs(broker.config.limits.connect_timeout_secs);
    let max = broker.config.limits.max_packet_size as usize;
    let mut buf = BytesMut::with_capacity(1024);
    let first = tokio::time::timeout(timeout, read_connect(&mut t, &mut buf, max)).await;
    let (version, packet) = match first {
        Err(_) => {
            tracing::info!(%peer, "no CONNECT within {}s; closing", timeout.as_secs());
            Metrics::inc(&broker.metrics.connects_refused);
            t.close().await;
            return None;
        }
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "bad CONNECT; closing");
            Metrics::inc(&broker.metrics.connects_refused);
            if let codec::DecodeError::UnsupportedProtocol { .. } = e {
                // The 3.1.1 answer (return code 0x01) is understood by old clients too.
                let _ = refuse(
                    &mut t,
                    Version::V4,
                    ConnectReturnCode::RefusedProtocolVersion,
                )
                .await;
            }
            t.close().await;
            return None;
        }
        Ok(Ok(v)) => v,
    };
    let Packet::Connect(connect, will, login) = packet else {
        t.close().await;
        return None;
    };
    let now = Now::of(&broker);
    match Protocol::open(
        broker.clone(),
        version,
        connect,
        will,
        login,
        buf,
        peer,
        now,
    )
    .await
    {
        Ok(p) => Some(Box::new(Conn { p, t })),
        Err(code) => {
            Metrics::inc(&broker.metrics.connects_refused);
            let _ = refuse(&mut t, version, code).await;
            t.close().await;
            None
        }
    }
}

async fn refuse<T: Transport>(
    t: &mut T,
    version: Version,
    code: ConnectReturnCode,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    let ack = ConnAck {
        session_present: false,
        code,
        properties: (version == Version::V5).then(|| ConnAckProperties {
            session_expiry_interval: None,
            receive_max: None,
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: Some(connack_text(code).to_owned()),
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        }),
    };
    let _ = codec::encode(version, &Packet::ConnAck(ack), &mut out);
    t.write_all(&out).await
}

async fn read_connect<T: Transport>(
    t: &mut T,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(Version, Packet), codec::DecodeError> {
    loop {
        if let Some(v) = codec::detect_version(buf, max)? {
            return match codec::decode(v, buf, max)? {
                Some(p @ Packet::Connect(..)) => Ok((v, p)),
                _ => Err(codec::DecodeError::NotConnect),
            };
        }
        match t.read_into(buf).await {
            Ok(0) | Err(_) => {
                return Err(codec::DecodeError::Malformed(
                    "closed before CONNECT".into(),
                ))
            }
            Ok(_) => {}
        }
    }
}

impl Protocol {
    /// Answers a decoded CONNECT: authenticates (the hooks may take their
    /// time), attaches the session and queues the CONNACK and any resends.
    /// `inbuf` holds what arrived after the CONNECT. No I/O: a refusal is
    /// returned for the driver to send.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        broker: Arc<Broker>,
        version: Version,
        connect: Connect,
        will: Option<LastWill>,
        login: Option<Login>,
        inbuf: BytesMut,
        peer: SocketAddr,
        now: Now,
    ) -> Result<Protocol, ConnectReturnCode> {
        let limits = broker.config.limits.clone();
        let props = connect.properties.clone().unwrap_or_default();
        if props.authentication_method.is_some() {
            return Err(ConnectReturnCode::BadAuthenticationMethod);
        }
        // Client id: 3.1.1 allows an empty one only with a clean session.
        let mut assigned = None;
        let client_id = if connect.client_id.is_empty() {
            if version == Version::V4 && !connect.clean_start {
                tracing::info!(%peer, "empty client id with clean session 0; refused");
                return Err(ConnectReturnCode::ClientIdentifierNotValid);
            }
            let id = format!("courier-{:016x}", rand_u64());
            assigned = Some(id.clone());
            id
        } else {
            connect.client_id.clone()
        };
        let username = login.as_ref().map(|l| l.username.clone());
        let password = login.as_ref().map(|l| l.password.clone().into_bytes());
        let hooks = broker.hooks.clone();
        let decision = hooks
            .authenticate(AuthRequest {
                client_id: &client_id,
                username: username.as_deref(),
                password: password.as_deref(),
                peer,
            })
            .await;
        let mut principal = None;
        let code = match decision {
            AuthDecision::Allow => None,
            AuthDecision::AllowAs(p) if p.expires_at.is_some_and(|t| t <= now.unix_secs) => {
                Some(ConnectReturnCode::NotAuthorized)
            }
            AuthDecision::AllowAs(p) => {
                principal = Some(p);
                None
            }
            AuthDecision::BadCredentials => Some(ConnectReturnCode::BadUserNamePassword),
            AuthDecision::NotAuthorized => Some(ConnectReturnCode::NotAuthorized),
        };
        if let Some(code) = code {
            tracing::info!(%peer, client_id = %client_id, ?code, "authentication refused");
            return Err(code);
        }
        let client = ClientInfo {
            client_id: client_id.as_str().into(),
            username: username.map(|u| u.as_str().into()),
            principal,
        };

        // Session expiry: 3.1.1 clean session 0 means "never expires".
        let mut expiry = match version {
            Version::V4 if !connect.clean_start => u32::MAX,
            Version::V4 => 0,
            Version::V5 => props.session_expiry_interval.unwrap_or(0),
        };
        let mut expiry_capped = false;
        if limits.max_session_expiry_secs > 0 && expiry > limits.max_session_expiry_secs {
            expiry = limits.max_session_expiry_secs;
            expiry_capped = true;
        }

        // Keep alive: 0 means none; a cap is announced to 5.0 clients.
        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        if limits.max_keep_alive_secs > 0
            && v5(version)
            && (keep_alive == 0 || keep_alive > limits.max_keep_alive_secs)
        {
            keep_alive = limits.max_keep_alive_secs;
            server_keep_alive = Some(keep_alive);
        }

        // The will is validated now; a bad one refuses the CONNECT.
        let will = match will {
            None => None,
            Some(w) => {
                let topic_ok = std::str::from_utf8(&w.topic)
                    .ok()
                    .filter(|t| topic::validate_name(t, broker.topic_limits()).is_ok())
                    .map(str::to_owned);
                let Some(wt) = topic_ok else {
                    tracing::info!(%peer, client_id = %client.client_id, "invalid will topic; refused");
                    return Err(ConnectReturnCode::TopicNameInvalid);
                };
                let wp = w.properties.unwrap_or(LastWillProperties {
                    delay_interval: None,
                    payload_format_indicator: None,
                    message_expiry_interval: None,
                    content_type: None,
                    response_topic: None,
                    correlation_data: None,
                    user_properties: Vec::new(),
                });
                let now = now.unix_secs;
                let msg_props = MessageProps {
                    payload_format: wp.payload_format_indicator,
                    content_type: wp.content_type,
                    response_topic: wp.response_topic,
                    correlation_data: wp.correlation_data,
                    user_properties: wp.user_properties,
                };
                let msg = Message {
                    topic: wt,
                    payload: w.message,
                    qos: w.qos as u8,
                    retain: w.retain,
                    expires_at: wp.message_expiry_interval.map(|e| now + e as u64),
                    props: boxed_props(msg_props),
                };
                Some(Box::new((msg, wp.delay_interval.unwrap_or(0).min(expiry))))
            }
        };

        let attached = match broker.attach(&client, connect.clean_start, expiry).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "attaching session failed");
                return Err(ConnectReturnCode::ServerUnavailable);
            }
        };
        if let Some(t) = client.principal.as_ref().and_then(|p| p.expires_at) {
            broker.expire_credential(&attached.session, attached.generation, t);
        }
        let max_inflight = limits.max_inflight as usize;
        let client_recv_max = props.receive_maximum.unwrap_or(u16::MAX).max(1) as usize;
        let log = attached.session.state.lock().log;
        let mut conn = Protocol {
            version,
            client: client.clone(),
            log,
            session: attached.session,
            generation: attached.generation,
            inbuf,
            out: BytesMut::new(),
            held: BytesMut::new(),
            must_sync: false,
            deferred: Vec::new(),
            keep_alive: keep_alive > 0,
            watch_id: 0,
            max_inflight_out: client_recv_max.min(max_inflight),
            client_max_packet: props
                .max_packet_size
                .map(|m| m as usize)
                .unwrap_or(usize::MAX),
            aliases: None,
            problem_info: v5(version) && props.request_problem_info != Some(0),
            alias_out_max: if v5(version) {
                props
                    .topic_alias_max
                    .unwrap_or(0)
                    .min(broker.config.limits.topic_alias_out_max)
            } else {
                0
            },
            will,
            unacked_in: 0,
            acks: None,
            throttle: Vec::new(),
            peer,
            broker,
        };
        let ack_props = v5(version).then(|| ConnAckProperties {
            session_expiry_interval: expiry_capped.then_some(expiry),
            receive_max: Some(limits.max_inflight),
            max_qos: None,
            retain_available: Some(1),
            max_packet_size: Some(limits.max_packet_size),
            assigned_client_identifier: assigned,
            topic_alias_max: Some(limits.topic_alias_max),
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(1),
            shared_subscription_available: Some(1),
            server_keep_alive,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        });
        let ack = ConnAck {
            session_present: attached.session_present,
            code: ConnectReturnCode::Success,
            properties: ack_props,
        };
        conn.send(&Packet::ConnAck(ack));
        if keep_alive > 0 {
            // The server closes after 1.5 x keep-alive without a packet.
            let limit = Duration::from_millis(keep_alive as u64 * 1500);
            conn.watch_id = conn
                .broker
                .watchdog
                .watch(&conn.session, conn.generation, limit);
        }
        // Anything in flight from an earlier connection goes again, marked DUP.
        let resend = conn.session.state.lock().resend();
        for n in resend {
            conn.emit_next(n, now.unix_secs);
        }
        tracing::debug!(%peer, client_id = %client.client_id, ?version, present = attached.session_present, "connected");
        conn.broker.emit(Event::Connected {
            client,
            session_present: attached.session_present,
        });
        Ok(conn)
    }
}

fn rand_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}
