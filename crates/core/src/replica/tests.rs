//! Tests of `replica`.

use super::*;

#[test]
fn addresses_parse_or_say_why() {
    assert_eq!(resolve_address("127.0.0.1:80").unwrap().port(), 80);
    assert!(resolve_address("[::1]:8080").unwrap().is_ipv6());
    assert_eq!(resolve_address("localhost:81").unwrap().port(), 81);
    let err = resolve_address("127.0.0.1:0").unwrap_err().to_string();
    assert!(err.contains("port 0"), "{err}");
    let err = resolve_address("127.0.0.1").unwrap_err().to_string();
    assert!(err.contains("expected"), "{err}");
    let err = resolve_address("host:http").unwrap_err().to_string();
    assert!(err.contains("port must be a number"), "{err}");
}

#[test]
fn ids_are_checked_and_derived() {
    assert!(ReplicaId::new("gpu-a.1_x").is_ok());
    assert!(ReplicaId::new("").is_err());
    assert!(ReplicaId::new("a/b").is_err());
    assert!(ReplicaId::new(&"x".repeat(65)).is_err());
    assert_eq!(
        ReplicaId::from_address("127.0.0.1:9001").as_str(),
        "127.0.0.1-9001"
    );
    assert_eq!(ReplicaId::from_address("[::1]:9001").as_str(), "--1-9001");
}

#[test]
fn weights_are_bounded() {
    assert_eq!(check_weight(0), Ok(0));
    assert_eq!(check_weight(1000), Ok(1000));
    assert!(check_weight(1001).is_err());
    assert!(check_weight(u64::MAX).is_err());
}

#[test]
fn slow_start_ramps_after_joining_and_after_an_ejection() {
    let mut r = Replica::new(
        ReplicaId::new("a").unwrap(),
        "127.0.0.1:1".into(),
        "127.0.0.1:1".parse().unwrap(),
        1,
    );
    r.ramp_from_ms = 1_000;
    assert_eq!(r.ramp(5_000, 0), 1.0);
    assert!((r.ramp(6_000, 10_000) - 0.5).abs() < 1e-9);
    assert_eq!(r.ramp(20_000, 10_000), 1.0);
    r.stats.eject_until(30_000);
    assert!(r.ramp(31_000, 10_000) < 0.15);
}

#[test]
fn in_flight_guard_counts_down_on_drop() {
    let stats = Arc::new(ReplicaStats::default());
    let a = stats.start_request();
    let b = stats.start_request();
    assert_eq!(stats.in_flight(), 2);
    drop(a);
    drop(b);
    assert_eq!(stats.in_flight(), 0);
    assert_eq!(stats.requests(), 2);
}
