//! Local stand-ins for APNs and FCM, to try the push bridge without Apple
//! or Google: `cargo run -p courier-examples --bin push-fakes`. It writes
//! a throwaway CA, an APNs signing key and an FCM service account key to
//! `--dir`, prints the `[chat.push]` section that points `courier` at the
//! fakes, then prints every push they receive (headers and JSON body), so
//! you can see that nothing readable leaves the server.

use std::time::Duration;

use clap::Parser;
use push_bridge::fakes::apns::FakeApns;
use push_bridge::fakes::fcm::FakeFcm;

#[derive(Parser)]
struct Args {
    /// Where the keys and the CA go.
    #[arg(long, default_value = "push-fakes")]
    dir: std::path::PathBuf,
    /// The APNs fake's port.
    #[arg(long, default_value_t = 8443)]
    apns_port: u16,
    /// The FCM fake's port.
    #[arg(long, default_value_t = 8444)]
    fcm_port: u16,
    /// The iOS app's bundle id.
    #[arg(long, default_value = "com.example.chat")]
    topic: String,
    /// The Firebase project.
    #[arg(long, default_value = "courier-demo")]
    project: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.dir)?;
    let dir = std::fs::canonicalize(&a.dir)?;
    let apns = FakeApns::start(&dir, &a.topic, a.apns_port).await?;
    let fcm = FakeFcm::start(&dir, &a.project, a.fcm_port).await?;
    let p = |x: &std::path::Path| x.display().to_string();
    let app = &apns.app;
    println!("# Add to courier.toml (due_ms short, to see pushes quickly):");
    println!("[chat.push]\ndue_ms = 1000\n");
    println!("[[chat.push.apns]]");
    println!(
        "topic = {:?}\nteam_id = {:?}\nkey_id = {:?}",
        app.topic, app.team_id, app.key_id
    );
    println!("key_file = {:?}", p(&app.key_file));
    println!(
        "production_url = {:?}\nsandbox_url = {:?}",
        app.production_url, app.sandbox_url
    );
    println!("ca_file = {:?}\n", p(&apns.ca_file()));
    println!("[[chat.push.fcm]]");
    println!("project = {:?}", fcm.app.project);
    println!(
        "service_account_file = {:?}",
        p(&fcm.app.service_account_file)
    );
    println!(
        "base_url = {:?}\nca_file = {:?}",
        fcm.app.base_url,
        p(&fcm.ca_file())
    );
    println!(
        "\n# APNs fake on {}, FCM fake on {}; pushes follow.",
        apns.url, fcm.url
    );
    let (mut seen_apns, mut seen_fcm) = (0, 0);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for r in apns.received().iter().skip(seen_apns) {
            println!(
                "APNs {} {} {} {}",
                r.status,
                r.token,
                serde_json::to_string(&r.headers)?,
                r.body
            );
            seen_apns += 1;
        }
        for r in fcm.received().iter().skip(seen_fcm) {
            println!("FCM {} {} {}", r.status, r.token, r.body);
            seen_fcm += 1;
        }
    }
}
