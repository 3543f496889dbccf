//! Prices per market: CNY fen converted to each market's display currency at the configured
//! rate, with the buyer-paid tax and shipping estimates, and the views viewers receive. Pure
//! functions of the configuration, so every node shows the same numbers.

use super::{Product, SaleSnapshot};
use crate::config::{CommerceConfig, MarketConfig};
use ferry_client::protocol::commerce::{MarketOffer, Money, ProductView, SaleStatus, SaleView};
use std::collections::{BTreeMap, BTreeSet};

/// `fen` CNY in `market`'s minor units, rounded half away from zero.
pub fn convert(fen: i64, market: &MarketConfig) -> i64 {
    let major_cny = fen as f64 / 100.0;
    let minor = major_cny * market.per_cny * 10f64.powi(market.minor_digits as i32);
    minor.round() as i64
}

/// `fen` in `market`'s currency.
pub fn money(fen: i64, market: &MarketConfig) -> Money {
    Money {
        currency: market.currency.clone(),
        minor: convert(fen, market),
    }
}

fn offers(
    price_fen: i64,
    enabled: &BTreeSet<String>,
    cfg: &CommerceConfig,
) -> BTreeMap<String, MarketOffer> {
    cfg.markets
        .iter()
        .map(|(code, m)| {
            let price = convert(price_fen, m);
            let offer = MarketOffer {
                available: enabled.contains(code),
                price: Money {
                    currency: m.currency.clone(),
                    minor: price,
                },
                tax_estimate: Money {
                    currency: m.currency.clone(),
                    minor: (price as f64 * m.tax_percent / 100.0).round() as i64,
                },
                shipping_estimate: Money {
                    currency: m.currency.clone(),
                    minor: m.shipping_minor,
                },
            };
            (code.clone(), offer)
        })
        .collect()
}

/// A product as viewers see it, with every configured market's offer.
pub fn product_view(p: &Product, cfg: &CommerceConfig) -> ProductView {
    ProductView {
        id: p.id.clone(),
        title: p.title.clone(),
        description: p.description.clone(),
        image_url: p.image_url.clone(),
        lang: p.lang.clone(),
        price_cny: p.price_cny,
        markets: offers(p.price_cny, &p.enabled_markets(), cfg),
        fx_date: cfg.fx_date.clone(),
        translations: p.translations.clone(),
    }
}

/// A sale as viewers see it at `now`.
pub fn sale_view(s: &SaleSnapshot, product: &Product, cfg: &CommerceConfig, now: u64) -> SaleView {
    let sale = &s.sale;
    let ended = sale.ended_at.is_some_and(|t| t <= now) || now >= sale.ends_at;
    let status = if ended {
        SaleStatus::Ended
    } else if now < sale.starts_at {
        SaleStatus::Scheduled
    } else if s.remaining == 0 {
        SaleStatus::SoldOut
    } else {
        SaleStatus::Open
    };
    SaleView {
        id: sale.id.clone(),
        room: sale.room.clone(),
        product: product_view(product, cfg),
        quantity: sale.quantity,
        remaining: s.remaining,
        price_cny: sale.price_cny,
        markets: offers(sale.price_cny, &sale.markets, cfg),
        per_buyer_limit: sale.per_buyer_limit,
        starts_at: sale.starts_at,
        ends_at: sale.ended_at.unwrap_or(sale.ends_at).min(sale.ends_at),
        hold_secs: sale.hold_ms / 1000,
        status,
        version: s.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_fen_to_display_minor_units() {
        let cfg = CommerceConfig::default();
        let usd = &cfg.markets["us"];
        // ¥59.00 at 0.1387 USD/CNY = $8.1833 → 818 cents.
        assert_eq!(convert(5900, usd), 818);
        let cny = &cfg.markets["cn"];
        assert_eq!(convert(5900, cny), 5900);
        let jpy = MarketConfig {
            currency: "JPY".into(),
            minor_digits: 0,
            per_cny: 21.3,
            tax_percent: 10.0,
            shipping_minor: 0,
        };
        assert_eq!(convert(5900, &jpy), 1257);
    }
}
