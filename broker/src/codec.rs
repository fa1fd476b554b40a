//! Wire codec: frames bytes into packets for MQTT 3.1.1 and 5.0.
//!
//! Decoding and encoding are delegated to rumqttc's `mqttbytes` (v4 and v5).
//! The broker works on one packet model, the v5 one; 3.1.1 packets are mapped
//! to it on the way in and back on the way out. Framing (the fixed header and
//! the size limit) is done here, so an oversized packet is refused before its
//! body is buffered, and quirks of the client-side parser are handled in one
//! place.

use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::v4;
pub use rumqttc::v5::mqttbytes::v5::*;
pub use rumqttc::v5::mqttbytes::QoS;
use thiserror::Error;

/// The protocol version of a connection, taken from its CONNECT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

/// Why bytes from a peer could not be decoded.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The packet is larger than the configured maximum.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Total size of the packet, fixed header included.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// The first packet was not a CONNECT.
    #[error("first packet is not CONNECT")]
    NotConnect,
    /// CONNECT named a protocol this broker does not speak.
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol {
        /// Protocol name from the CONNECT variable header.
        name: String,
        /// Protocol level from the CONNECT variable header.
        level: u8,
    },
    /// The bytes do not form a valid packet.
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// Parses a fixed header. Returns `(header_len, remaining_len)`, or `None`
/// when more bytes are needed.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, len)));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length longer than 4 bytes".into(),
    ))
}

/// Reads the protocol version from a complete CONNECT frame at the start of
/// `buf`. Returns `None` if the frame is not complete yet.
pub fn detect_version(buf: &[u8], max_size: usize) -> Result<Option<Version>, DecodeError> {
    let Some((hlen, rlen)) = fixed_header(buf)? else {
        return Ok(None);
    };
    if hlen + rlen > max_size {
        return Err(DecodeError::TooLarge {
            size: hlen + rlen,
            max: max_size,
        });
    }
    if buf[0] >> 4 != 1 {
        return Err(DecodeError::NotConnect);
    }
    if buf.len() < hlen + rlen {
        return Ok(None);
    }
    let body = &buf[hlen..hlen + rlen];
    if body.len() < 2 {
        return Err(DecodeError::Malformed("CONNECT too short".into()));
    }
    let name_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let Some(name) = body.get(2..2 + name_len) else {
        return Err(DecodeError::Malformed("CONNECT too short".into()));
    };
    let Some(&level) = body.get(2 + name_len) else {
        return Err(DecodeError::Malformed("CONNECT too short".into()));
    };
    let name = String::from_utf8_lossy(name).into_owned();
    match (name.as_str(), level) {
        ("MQTT", 4) => Ok(Some(Version::V4)),
        ("MQTT", 5) => Ok(Some(Version::V5)),
        _ => Err(DecodeError::UnsupportedProtocol { name, level }),
    }
}

/// Takes one packet off the front of `buf`, or returns `Ok(None)` if the
/// buffer does not yet hold a whole packet.
pub fn decode(
    version: Version,
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some((hlen, rlen)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let size = hlen + rlen;
    if size > max_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_size,
        });
    }
    if buf.len() < size {
        // Reserve room for the rest so the reader fills it in few calls.
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    // A v5 DISCONNECT with no body means "normal disconnection"; the
    // client-side parser expects a body, so it is handled here.
    if version == Version::V5 && first == 0xE0 && rlen == 0 {
        buf.advance(size);
        return Ok(Some(Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        ))));
    }
    check_flags(first)?;
    let mut frame = buf.split_to(size);
    // The parser is third-party client code; a panic in it must not take the
    // broker down, so it is contained and reported as a malformed packet.
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match version {
        Version::V5 => Packet::read(&mut frame, None).map_err(|e| e.to_string()),
        Version::V4 => v4::Packet::read(&mut frame, usize::MAX)
            .map_err(|e| e.to_string())
            .and_then(from_v4),
    }));
    match res {
        Ok(Ok(p)) => Ok(Some(p)),
        Ok(Err(e)) => Err(DecodeError::Malformed(e)),
        Err(_) => {
            tracing::error!("packet parser panicked; treated as malformed");
            Err(DecodeError::Malformed("parser failure".into()))
        }
    }
}

/// Checks the reserved flag bits of the first header byte (MQTT 2.1.3).
fn check_flags(first: u8) -> Result<(), DecodeError> {
    let flags = first & 0x0f;
    let ok = match first >> 4 {
        3 => (flags >> 1) & 0x03 != 3,
        6 | 8 | 10 => flags == 0x02,
        0 | 15 => false,
        _ => flags == 0,
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::Malformed(format!(
            "invalid fixed header byte {first:#04x}"
        )))
    }
}

/// Maps a decoded 3.1.1 packet to the v5 model.
fn from_v4(p: v4::Packet) -> Result<Packet, String> {
    Ok(match p {
        v4::Packet::Connect(c) => {
            let will = c.last_will.map(|w| LastWill {
                topic: w.topic.into_bytes().into(),
                message: w.message,
                qos: qos_from_v4(w.qos),
                retain: w.retain,
                properties: None,
            });
            let login = c.login.map(|l| Login {
                username: l.username,
                password: l.password,
            });
            let connect = Connect {
                keep_alive: c.keep_alive,
                client_id: c.client_id,
                clean_start: c.clean_session,
                properties: None,
            };
            Packet::Connect(connect, will, login)
        }
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos_from_v4(p.qos),
            retain: p.retain,
            topic: p.topic.into_bytes().into(),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        v4::Packet::PubAck(a) => Packet::PubAck(PubAck::new(a.pkid, None)),
        v4::Packet::PubRec(a) => Packet::PubRec(PubRec::new(a.pkid, None)),
        v4::Packet::PubRel(a) => Packet::PubRel(PubRel::new(a.pkid, None)),
        v4::Packet::PubComp(a) => Packet::PubComp(PubComp::new(a.pkid, None)),
        v4::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| Filter {
                    path: f.path,
                    qos: qos_from_v4(f.qos),
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
            properties: None,
        }),
        v4::Packet::PingReq => Packet::PingReq(PingReq),
        v4::Packet::Disconnect => {
            Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
        }
        other => return Err(format!("unexpected packet from client: {other:?}")),
    })
}

fn qos_from_v4(q: rumqttc::mqttbytes::QoS) -> QoS {
    match q {
        rumqttc::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to_v4(q: QoS) -> rumqttc::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Error)]
#[error("cannot encode packet: {0}")]
pub struct EncodeError(String);

/// Appends the wire form of `packet` to `out`. Packets that do not exist in
/// 3.1.1 (a server DISCONNECT, AUTH) are skipped for v4 connections.
pub fn encode(version: Version, packet: &Packet, out: &mut BytesMut) -> Result<(), EncodeError> {
    // mqttbytes writes a DISCONNECT with a reason code and no properties
    // with a remaining length one short of what it writes; this form
    // (reason code, empty property list) is valid and readable by clients.
    if let (Version::V5, Packet::Disconnect(d)) = (version, packet) {
        if d.properties.is_none() {
            out.extend_from_slice(&[0xE0, 0x02, d.reason_code as u8, 0x00]);
            return Ok(());
        }
    }
    let res = match version {
        Version::V5 => packet.write(out, None).map(|_| ()),
        Version::V4 => {
            let Some(p) = to_v4(packet) else {
                return Ok(());
            };
            p.write(out, usize::MAX)
                .map(|_| ())
                .map_err(|e| EncodeError(e.to_string()))?;
            return Ok(());
        }
    };
    res.map_err(|e| EncodeError(e.to_string()))
}

/// Size in bytes that `packet` takes on the wire for `version`.
pub fn encoded_size(version: Version, packet: &Packet) -> usize {
    match version {
        Version::V5 => packet.size(),
        Version::V4 => to_v4(packet).map(|p| p.size()).unwrap_or(0),
    }
}

/// Maps a broker-generated packet to its 3.1.1 form.
fn to_v4(p: &Packet) -> Option<v4::Packet> {
    Some(match p {
        Packet::ConnAck(c) => v4::Packet::ConnAck(v4::ConnAck {
            session_present: c.session_present,
            code: connack_code_v4(c.code),
        }),
        Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: qos_to_v4(p.qos),
            retain: p.retain,
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            pkid: p.pkid,
            payload: p.payload.clone(),
        }),
        Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck::new(a.pkid)),
        Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec::new(a.pkid)),
        Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel::new(a.pkid)),
        Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp::new(a.pkid)),
        Packet::SubAck(s) => v4::Packet::SubAck(v4::SubAck::new(
            s.pkid,
            s.return_codes
                .iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(q) => {
                        v4::SubscribeReasonCode::Success(qos_to_v4(*q))
                    }
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Packet::UnsubAck(u) => v4::Packet::UnsubAck(v4::UnsubAck::new(u.pkid)),
        Packet::PingResp(_) => v4::Packet::PingResp,
        _ => return None,
    })
}

fn connack_code_v4(code: ConnectReturnCode) -> v4::ConnectReturnCode {
    use ConnectReturnCode as C;
    match code {
        C::Success => v4::ConnectReturnCode::Success,
        C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => {
            v4::ConnectReturnCode::RefusedProtocolVersion
        }
        C::ClientIdentifierNotValid | C::BadClientId => v4::ConnectReturnCode::BadClientId,
        C::BadUserNamePassword => v4::ConnectReturnCode::BadUserNamePassword,
        C::NotAuthorized | C::Banned | C::BadAuthenticationMethod => {
            v4::ConnectReturnCode::NotAuthorized
        }
        _ => v4::ConnectReturnCode::ServiceUnavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_connect() -> BytesMut {
        let mut b = BytesMut::new();
        v4::Connect::new("c1").write(&mut b).unwrap();
        b
    }

    #[test]
    fn detects_v4_and_v5() {
        assert_eq!(
            detect_version(&v4_connect(), 1024).unwrap(),
            Some(Version::V4)
        );
        let mut b = BytesMut::new();
        Packet::Connect(
            Connect {
                keep_alive: 10,
                client_id: "x".into(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        )
        .write(&mut b, None)
        .unwrap();
        assert_eq!(detect_version(&b, 1024).unwrap(), Some(Version::V5));
        assert_eq!(detect_version(&b[..3], 1024).unwrap(), None);
    }

    #[test]
    fn refuses_oversized_before_buffering() {
        // Header claims 1 MiB; only the header is present.
        let mut b = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x40][..]);
        assert!(matches!(
            decode(Version::V4, &mut b, 1000),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn empty_v5_disconnect_is_normal() {
        let mut b = BytesMut::from(&[0xE0u8, 0x00][..]);
        match decode(Version::V5, &mut b, 100).unwrap() {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, DisconnectReasonCode::NormalDisconnection)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_disconnect_round_trips() {
        let mut out = BytesMut::new();
        let d = Disconnect::new(DisconnectReasonCode::SessionTakenOver);
        encode(Version::V5, &Packet::Disconnect(d), &mut out).unwrap();
        assert_eq!(&out[..], &[0xE0, 0x02, 0x8E, 0x00]);
        let p = Packet::read(&mut out, None).unwrap();
        assert!(
            matches!(p, Packet::Disconnect(d) if d.reason_code == DisconnectReasonCode::SessionTakenOver)
        );
        assert!(out.is_empty(), "no stray bytes after the packet");
    }

    #[test]
    fn disconnect_with_reason_string_round_trips() {
        let mut out = BytesMut::new();
        let d = Disconnect {
            reason_code: DisconnectReasonCode::ProtocolError,
            properties: Some(DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some("second CONNECT".into()),
                user_properties: vec![],
                server_reference: None,
            }),
        };
        encode(Version::V5, &Packet::Disconnect(d.clone()), &mut out).unwrap();
        let back = Packet::read(&mut out, None).unwrap();
        assert_eq!(back, Packet::Disconnect(d));
        assert!(out.is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz over short byte strings.
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let mut bytes = Vec::with_capacity(len);
            let mut s = seed;
            for _ in 0..len {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                bytes.push((s >> 33) as u8);
            }
            for v in [Version::V4, Version::V5] {
                let mut b = BytesMut::from(&bytes[..]);
                while let Ok(Some(_)) = decode(v, &mut b, 64) {}
            }
            let _ = detect_version(&bytes, 64);
        }
    }
}
