//! Appends a few events and follows their category, resuming on another node if one fails.
//!
//! Against `fjord dev` (in another terminal): `export FJORD_TOKEN=$(cat data/security/admin.token)`, then
//! `cargo run -p fjord-client --example follow`. `FJORD_SERVERS` (default `127.0.0.1:7101,127.0.0.1:7102,
//! 127.0.0.1:7103`) names the nodes.

use fjord_client::Client;
use fjord_client::EventData;
use fjord_client::Expected;
use fjord_client::Start;
use fjord_client::v1::SubscriptionFilter;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let servers =
        std::env::var("FJORD_SERVERS").unwrap_or_else(|_| "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103".to_owned());
    let token = std::env::var("FJORD_TOKEN").map_err(|_| "set FJORD_TOKEN (fjord dev prints it)")?;
    let client = Client::new(servers.split(','), Some(&token))?;

    // Each event gets its id before the first attempt: a retry after a timeout never writes twice.
    let cart = format!("cart-{}", std::process::id());
    for (event_type, data) in
        [("ItemAdded", r#"{"sku":"tea"}"#), ("ItemAdded", r#"{"sku":"cups"}"#), ("CheckedOut", "{}")]
    {
        let appended = client.append(&cart, Expected::Any, vec![EventData::json(event_type, data.as_bytes())]).await?;
        println!("appended {event_type} to {cart} at revision {}", appended.revision);
    }

    // History first, then live; the position moves with every delivery, checkpoints included.
    let filter = SubscriptionFilter { stream: cart.clone(), ..Default::default() };
    let mut subscription = client.subscribe(filter, Start::Beginning);
    let mut seen = 0;
    while seen < 3 {
        let delivery = subscription.next().await?;
        for event in &delivery.events {
            let position = event.position.unwrap_or_default();
            println!(
                "{}@{}  {}  {}",
                event.stream,
                position.revision,
                event.r#type,
                String::from_utf8_lossy(&event.data)
            );
            seen += 1;
        }
        println!("  (from {}; resume from {:?})", delivery.node, delivery.next_offsets);
    }
    Ok(())
}
