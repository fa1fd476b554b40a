//! Courier as a plain MQTT broker for IoT-style devices: a sensor
//! publishes its temperature every second as a retained message (a new
//! subscriber gets the last value at once) with a will (`offline`,
//! retained) that the broker publishes if the sensor drops without saying
//! goodbye; a watcher subscribes to every sensor.
//!
//! With a broker running (`cargo run --release -p courier-chat --bin
//! courier -- --config config/courier.toml`):
//! `cargo run -p courier-examples --bin iot-sensor -- sensor s1` in one
//! terminal, `cargo run -p courier-examples --bin iot-sensor -- watch` in
//! another; stop the sensor with Ctrl-C or kill -9 and watch its status.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server = std::env::var("COURIER").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let (host, port) = server
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("COURIER is host:port"))?;
    let port: u16 = port.parse()?;
    match args.first().map(String::as_str) {
        Some("sensor") => {
            let id = args.get(1).cloned().unwrap_or_else(|| "s1".into());
            let status = format!("sensors/{id}/status");
            let mut o = MqttOptions::new(format!("sensor-{id}"), host, port);
            o.set_keep_alive(Duration::from_secs(10));
            o.set_last_will(LastWill::new(&status, "offline", QoS::AtLeastOnce, true));
            let (client, mut el) = AsyncClient::new(o, 10);
            client
                .publish(&status, QoS::AtLeastOnce, true, "online")
                .await?;
            tokio::spawn(async move {
                loop {
                    if let Err(e) = el.poll().await {
                        eprintln!("connection: {e}; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            });
            let mut t = 20.0f64;
            loop {
                t += ((std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .subsec_millis()
                    % 7) as f64
                    - 3.0)
                    / 10.0;
                let topic = format!("sensors/{id}/temperature");
                client
                    .publish(&topic, QoS::AtLeastOnce, true, format!("{t:.1}"))
                    .await?;
                println!("{topic} {t:.1}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tokio::signal::ctrl_c() => {
                        // A clean goodbye: the will is not sent, so say it.
                        client.publish(&status, QoS::AtLeastOnce, true, "offline").await?;
                        client.disconnect().await?;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return Ok(());
                    }
                }
            }
        }
        Some("watch") => {
            let o = MqttOptions::new(format!("watcher-{}", std::process::id()), host, port);
            let (client, mut el) = AsyncClient::new(o, 10);
            client.subscribe("sensors/#", QoS::AtLeastOnce).await?;
            loop {
                if let Event::Incoming(Packet::Publish(p)) = el.poll().await? {
                    let retained = if p.retain { " (retained)" } else { "" };
                    println!(
                        "{} {}{retained}",
                        p.topic,
                        String::from_utf8_lossy(&p.payload)
                    );
                }
            }
        }
        _ => {
            anyhow::bail!("usage: iot-sensor sensor <id> | iot-sensor watch   (COURIER=host:port)")
        }
    }
}
