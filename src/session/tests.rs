//! Every rule of the table has a failing case; every way a body can be unreadable is a 400 with
//! no panic; lengths are UTF-16 units.

use super::*;
use serde_json::json;

const OPEN: Rules = Rules { secure: false };
const SECURE: Rules = Rules { secure: true };

fn v(pointer: &'static str, detail: &'static str) -> Violation {
    Violation::new(pointer, detail)
}

fn run(
    version: ApiVersion,
    body: &serde_json::Value,
    rules: &Rules,
) -> Result<SessionFacts, ApiError> {
    let bytes = serde_json::to_vec(body).unwrap();
    validate(version, &bytes, rules)
}

/// The violations of an invalid body (panics on any other outcome).
fn violations(version: ApiVersion, body: serde_json::Value, rules: &Rules) -> Vec<Violation> {
    match run(version, &body, rules) {
        Err(ApiError::Invalid(v)) => v,
        other => panic!("expected Invalid for {body}, got {other:?}"),
    }
}

/// The detail of a 400 (panics on any other outcome).
fn bad_request(version: ApiVersion, body: &[u8]) -> String {
    match validate(version, body, &OPEN) {
        Err(ApiError::BadRequest(d)) => d.into_owned(),
        other => panic!(
            "expected BadRequest for {:?}, got {other:?}",
            String::from_utf8_lossy(body)
        ),
    }
}

fn ok(version: ApiVersion, body: serde_json::Value, rules: &Rules) -> SessionFacts {
    match run(version, &body, rules) {
        Ok(f) => f,
        Err(e) => panic!("expected Ok for {body}, got {e:?}"),
    }
}

/// A valid body with `field` set to `value` (top level).
fn with(field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut b = json!({"userId": "u", "deviceId": "d"});
    b[field] = value;
    b
}

/// A valid body with `deviceInfo.field` set to `value`.
fn with_info(field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut b = json!({"userId": "u", "deviceId": "d", "deviceInfo": {}});
    b["deviceInfo"][field] = value;
    b
}

// --- js_len -----------------------------------------------------------------------------------

#[test]
fn js_len_counts_utf16_code_units() {
    assert_eq!(js_len(""), 0);
    assert_eq!(js_len("abc"), 3);
    assert_eq!(js_len("é"), 1, "2-byte UTF-8, 1 unit");
    assert_eq!(js_len("한"), 1, "3-byte UTF-8, 1 unit");
    assert_eq!(js_len("😀"), 2, "astral: surrogate pair");
    assert_eq!(js_len("e\u{301}"), 2, "combining mark counts on its own");
    assert_eq!(
        js_len("👍🏽"),
        4,
        "emoji + skin tone modifier: two astral code points"
    );
    assert_eq!(js_len("a😀é한"), 5);
    for s in ["", "abc", "é", "😀", "e\u{301}", "👩‍👩‍👧", "x\u{10FFFF}y"] {
        assert_eq!(js_len(s), s.encode_utf16().count(), "{s:?}");
    }
}

// --- ApiVersion -------------------------------------------------------------------------------

#[test]
fn api_version_names_round_trip() {
    assert_eq!(ApiVersion::V3.as_str(), "v3");
    assert_eq!(ApiVersion::V4.as_str(), "v4");
    assert_eq!(ApiVersion::V5.as_str(), "v5");
    for ver in ApiVersion::ALL {
        assert_eq!(ApiVersion::from_segment(ver.as_str()), Some(ver));
        assert_eq!(ver.to_string(), ver.as_str());
    }
    assert_eq!(ApiVersion::from_segment("v6"), None);
}

// --- valid bodies -----------------------------------------------------------------------------

/// The spec's v3 example is valid (also secure) and yields its userId and deviceId.
#[test]
fn spec_example_is_valid_and_yields_facts() {
    let body = br#"{
  "userId": "user-123",
  "deviceId": "device-abc-0001",
  "deviceInfo": { "kind": "ios", "model": "iPhone15,2", "sdkVersion": "6.35.3" },
  "displayName": "Alice",
  "authToken": "tok-xyz"
}"#;
    let want = SessionFacts {
        user_id: Some("user-123".into()),
        device_id: "device-abc-0001".into(),
    };
    for ver in ApiVersion::ALL {
        assert_eq!(validate(ver, body, &OPEN), Ok(want.clone()));
        assert_eq!(validate(ver, body, &SECURE), Ok(want.clone()));
    }
}

#[test]
fn minimal_body_is_valid_in_every_version() {
    for ver in ApiVersion::ALL {
        let f = ok(ver, json!({"userId": "u", "deviceId": "d"}), &OPEN);
        assert_eq!(f.user_id.as_deref().unwrap(), "u");
        assert_eq!(&*f.device_id, "d");
    }
}

/// Escapes are decoded before the rules and the facts see the string.
#[test]
fn escaped_strings_are_decoded() {
    let body = br#"{"userId":"user\u002d1","deviceId":"dev\/\"1\"\\"}"#;
    let f = validate(ApiVersion::V3, body, &OPEN).unwrap();
    assert_eq!(f.user_id.as_deref().unwrap(), "user-1");
    assert_eq!(&*f.device_id, r#"dev/"1"\"#);
}

/// An escaped surrogate pair is one astral character: 2 units, like the raw emoji.
#[test]
fn escaped_surrogate_pair_counts_two_units() {
    let ok50 = format!(
        r#"{{"userId":"{}","deviceId":"d"}}"#,
        r"\ud83d\ude00".repeat(25)
    );
    let f = validate(ApiVersion::V3, ok50.as_bytes(), &OPEN).unwrap();
    assert_eq!(f.user_id.as_deref().unwrap(), "😀".repeat(25));
    let bad51 = format!(
        r#"{{"userId":"{}a","deviceId":"d"}}"#,
        r"\ud83d\ude00".repeat(25)
    );
    assert_eq!(
        validate(ApiVersion::V3, bad51.as_bytes(), &OPEN),
        Err(ApiError::Invalid(vec![v(
            "/userId",
            "length must be 1 to 50"
        )]))
    );
}

/// Escaped key names are the same key (`JSON.parse` decodes them too).
#[test]
fn escaped_key_names_are_recognised() {
    let body = br#"{"user\u0049d":"","deviceId":"d"}"#;
    assert_eq!(
        validate(ApiVersion::V3, body, &OPEN),
        Err(ApiError::Invalid(vec![v(
            "/userId",
            "length must be 1 to 50"
        )]))
    );
}

/// Unknown fields of any JSON type pass untouched, at the top and inside deviceInfo.
#[test]
fn unknown_fields_pass() {
    let body = br#"{"userId":"u","extra":{"a":[1,2.5e300,-0,true,false,null,"\u00e9x",{"b":{}}]},
        "n":1e400,"big":123456789012345678901234567890,"s":"\ud800","deviceId":"d",
        "deviceInfo":{"kind":"web","os":{"name":"x"},"n":null},"metadata":[]}"#;
    for ver in ApiVersion::ALL {
        let f = validate(ver, body, &OPEN).unwrap();
        assert_eq!((f.user_id.as_deref().unwrap(), &*f.device_id), ("u", "d"));
    }
}

#[test]
fn whitespace_around_the_body_is_fine() {
    let body = b" \r\n\t{\"userId\" : \"u\" , \"deviceId\":\"d\"}\n\t ";
    assert!(validate(ApiVersion::V3, body, &OPEN).is_ok());
}

// --- userId -----------------------------------------------------------------------------------

#[test]
fn user_id_is_required() {
    for ver in ApiVersion::ALL {
        assert_eq!(
            violations(ver, json!({"deviceId": "d"}), &OPEN),
            vec![v("/userId", "is required")]
        );
    }
}

#[test]
fn user_id_must_be_a_string() {
    for bad in [
        json!(null),
        json!(1),
        json!(1.5),
        json!(-3),
        json!(true),
        json!([]),
        json!(["u"]),
        json!({"a": "u"}),
    ] {
        assert_eq!(
            violations(ApiVersion::V3, with("userId", bad), &OPEN),
            vec![v("/userId", "must be a string")]
        );
    }
}

#[test]
fn user_id_length_boundaries_in_utf16_units() {
    let fail = || vec![v("/userId", "length must be 1 to 50")];
    assert_eq!(
        violations(ApiVersion::V3, with("userId", json!("")), &OPEN),
        fail()
    );
    for good in [
        "a".repeat(50),
        "é".repeat(50),
        "😀".repeat(25),
        "e\u{301}".repeat(25),
        format!("{}a", "😀".repeat(24)),
    ] {
        ok(ApiVersion::V3, with("userId", json!(good)), &OPEN);
    }
    for bad in [
        "a".repeat(51),
        "é".repeat(51),
        format!("{}a", "😀".repeat(25)),
        format!("{}a", "e\u{301}".repeat(25)),
    ] {
        assert_eq!(
            violations(ApiVersion::V3, with("userId", json!(bad)), &OPEN),
            fail(),
            "{bad}"
        );
    }
    // 50 é are 100 bytes: bytes are not the measure.
    assert_eq!("é".repeat(50).len(), 100);
}

#[test]
fn v5_rejects_reserved_user_id_prefixes() {
    for bad in ["ADMIN_1", "DELETED_x", "ADMIN_", "DELETED_"] {
        assert_eq!(
            violations(ApiVersion::V5, with("userId", json!(bad)), &OPEN),
            vec![v("/userId", "must not start with ADMIN_ or DELETED_")]
        );
        ok(ApiVersion::V3, with("userId", json!(bad)), &OPEN);
        ok(ApiVersion::V4, with("userId", json!(bad)), &OPEN);
    }
    for good in ["ADMIN", "admin_1", "xADMIN_", "DELETED", "Deleted_1"] {
        ok(ApiVersion::V5, with("userId", json!(good)), &OPEN);
    }
    // An escape cannot hide the prefix.
    assert_eq!(
        validate(
            ApiVersion::V5,
            br#"{"userId":"\u0041DMIN_1","deviceId":"d"}"#,
            &OPEN
        ),
        Err(ApiError::Invalid(vec![v(
            "/userId",
            "must not start with ADMIN_ or DELETED_"
        )]))
    );
}

#[test]
fn v5_reports_both_length_and_prefix() {
    let long = format!("ADMIN_{}", "x".repeat(50));
    assert_eq!(
        violations(ApiVersion::V5, with("userId", json!(long)), &OPEN),
        vec![
            v("/userId", "length must be 1 to 50"),
            v("/userId", "must not start with ADMIN_ or DELETED_")
        ]
    );
}

// --- deviceId ---------------------------------------------------------------------------------

#[test]
fn device_id_is_required_and_a_string() {
    assert_eq!(
        violations(ApiVersion::V4, json!({"userId": "u"}), &OPEN),
        vec![v("/deviceId", "is required")]
    );
    for bad in [json!(null), json!(7), json!(false), json!(["d"]), json!({})] {
        assert_eq!(
            violations(ApiVersion::V4, with("deviceId", bad), &OPEN),
            vec![v("/deviceId", "must be a string")]
        );
    }
}

#[test]
fn device_id_length_boundaries_in_utf16_units() {
    let fail = || vec![v("/deviceId", "length must be 1 to 150")];
    assert_eq!(
        violations(ApiVersion::V3, with("deviceId", json!("")), &OPEN),
        fail()
    );
    for good in [
        "a".repeat(150),
        "é".repeat(150),
        "😀".repeat(75),
        "e\u{301}".repeat(75),
    ] {
        let f = ok(ApiVersion::V3, with("deviceId", json!(good)), &OPEN);
        assert_eq!(*f.device_id, *good);
    }
    for bad in [
        "a".repeat(151),
        "é".repeat(151),
        format!("{}a", "😀".repeat(75)),
        format!("{}é", "e\u{301}".repeat(75)),
    ] {
        assert_eq!(
            violations(ApiVersion::V3, with("deviceId", json!(bad)), &OPEN),
            fail()
        );
    }
}

// --- deviceInfo -------------------------------------------------------------------------------

#[test]
fn device_info_must_be_an_object() {
    for bad in [
        json!(null),
        json!("ios"),
        json!(1),
        json!(true),
        json!([]),
        json!([{"kind": "ios"}]),
    ] {
        assert_eq!(
            violations(ApiVersion::V3, with("deviceInfo", bad), &OPEN),
            vec![v("/deviceInfo", "must be an object")]
        );
    }
    ok(ApiVersion::V3, with("deviceInfo", json!({})), &OPEN);
}

#[test]
fn device_info_kind_is_one_of_four() {
    for good in ["ios", "android", "web", "node"] {
        ok(ApiVersion::V5, with_info("kind", json!(good)), &OPEN);
    }
    for bad in ["IOS", "windows", "", " ios", "ios\u{0}"] {
        assert_eq!(
            violations(ApiVersion::V5, with_info("kind", json!(bad)), &OPEN),
            vec![v(
                "/deviceInfo/kind",
                "must be one of ios, android, web, node"
            )]
        );
    }
    for bad in [json!(null), json!(1), json!(["ios"])] {
        assert_eq!(
            violations(ApiVersion::V5, with_info("kind", bad), &OPEN),
            vec![v("/deviceInfo/kind", "must be a string")]
        );
    }
}

#[test]
fn device_info_model_at_most_100_units() {
    for good in [
        "".to_owned(),
        "m".repeat(100),
        "é".repeat(100),
        "😀".repeat(50),
    ] {
        ok(ApiVersion::V3, with_info("model", json!(good)), &OPEN);
    }
    for bad in [
        "m".repeat(101),
        format!("{}m", "😀".repeat(50)),
        "e\u{301}".repeat(51),
    ] {
        assert_eq!(
            violations(ApiVersion::V3, with_info("model", json!(bad)), &OPEN),
            vec![v("/deviceInfo/model", "length must be at most 100")]
        );
    }
    assert_eq!(
        violations(ApiVersion::V3, with_info("model", json!(null)), &OPEN),
        vec![v("/deviceInfo/model", "must be a string")]
    );
}

#[test]
fn device_info_sdk_version_at_most_30_units() {
    for good in [
        "".to_owned(),
        "1".repeat(30),
        "é".repeat(30),
        "😀".repeat(15),
    ] {
        ok(ApiVersion::V3, with_info("sdkVersion", json!(good)), &OPEN);
    }
    for bad in [
        "1".repeat(31),
        format!("{}1", "😀".repeat(15)),
        "é".repeat(31),
    ] {
        assert_eq!(
            violations(ApiVersion::V3, with_info("sdkVersion", json!(bad)), &OPEN),
            vec![v("/deviceInfo/sdkVersion", "length must be at most 30")]
        );
    }
    assert_eq!(
        violations(ApiVersion::V3, with_info("sdkVersion", json!(6.35)), &OPEN),
        vec![v("/deviceInfo/sdkVersion", "must be a string")]
    );
}

// --- displayName ------------------------------------------------------------------------------

#[test]
fn display_name_at_most_100_units() {
    for good in [
        "".to_owned(),
        "n".repeat(100),
        "😀".repeat(50),
        "e\u{301}".repeat(50),
    ] {
        ok(ApiVersion::V3, with("displayName", json!(good)), &OPEN);
    }
    for bad in [
        "n".repeat(101),
        format!("{}n", "😀".repeat(50)),
        "é".repeat(101),
    ] {
        assert_eq!(
            violations(ApiVersion::V3, with("displayName", json!(bad)), &OPEN),
            vec![v("/displayName", "length must be at most 100")]
        );
    }
    for bad in [json!(null), json!(0), json!({})] {
        assert_eq!(
            violations(ApiVersion::V3, with("displayName", bad), &OPEN),
            vec![v("/displayName", "must be a string")]
        );
    }
}

// --- authToken --------------------------------------------------------------------------------

#[test]
fn auth_token_required_only_when_secure() {
    ok(
        ApiVersion::V3,
        json!({"userId": "u", "deviceId": "d"}),
        &OPEN,
    );
    for ver in ApiVersion::ALL {
        assert_eq!(
            violations(ver, json!({"userId": "u", "deviceId": "d"}), &SECURE),
            vec![v("/authToken", "is required")]
        );
        ok(ver, with("authToken", json!("t")), &SECURE);
    }
}

#[test]
fn auth_token_length_1_to_100_units() {
    for rules in [OPEN, SECURE] {
        for good in ["t".to_owned(), "t".repeat(100), "😀".repeat(50)] {
            ok(ApiVersion::V3, with("authToken", json!(good)), &rules);
        }
        for bad in [
            "".to_owned(),
            "t".repeat(101),
            format!("{}t", "😀".repeat(50)),
        ] {
            assert_eq!(
                violations(ApiVersion::V3, with("authToken", json!(bad)), &rules),
                vec![v("/authToken", "length must be 1 to 100")]
            );
        }
        for bad in [json!(null), json!(12345), json!(["t"])] {
            assert_eq!(
                violations(ApiVersion::V3, with("authToken", bad), &rules),
                vec![v("/authToken", "must be a string")]
            );
        }
    }
}

/// No detail of any outcome quotes a value: the secret token must never reach a response.
#[test]
fn details_never_echo_values() {
    let secret = "SECRET-TOKEN-VALUE";
    let long_secret = format!("{secret}{}", "x".repeat(200));
    let mut invalid = vec![
        with("authToken", json!(long_secret)),
        json!({"userId": secret, "deviceId": "", "authToken": long_secret, "displayName": [secret]}),
        json!({"userId": format!("ADMIN_{secret}"), "deviceId": "d", "deviceInfo": {"kind": secret, "model": long_secret}}),
    ];
    for body in invalid.drain(..) {
        for ver in ApiVersion::ALL {
            let err = run(ver, &body, &SECURE).unwrap_err();
            assert!(!format!("{err:?}").contains(secret), "{err:?}");
        }
    }
    let unreadable: Vec<Vec<u8>> = vec![
        format!(r#"{{"authToken":"{secret}" "userId":"u"}}"#).into_bytes(),
        format!(r#"{{"authToken":"{secret}","authToken":"{secret}"}}"#).into_bytes(),
        format!(r#"{{"authToken":"{secret}"}} {secret}"#).into_bytes(),
        format!(r#"{{"authToken":{secret}}}"#).into_bytes(),
        format!(r#"["{secret}"]"#).into_bytes(),
        format!(r#""{secret}""#).into_bytes(),
        [format!(r#"{{"authToken":"{secret}"#).as_bytes(), b"\xff\"}"].concat(),
    ];
    for body in unreadable {
        let detail = bad_request(ApiVersion::V3, &body);
        assert!(!detail.contains(secret), "{detail}");
    }
}

// --- profileHandle ----------------------------------------------------------------------------

#[test]
fn v4_checks_profile_handle() {
    for good in ["".to_owned(), "h".repeat(100), "😀".repeat(50)] {
        ok(ApiVersion::V4, with("profileHandle", json!(good)), &OPEN);
    }
    for bad in ["h".repeat(101), format!("{}h", "😀".repeat(50))] {
        assert_eq!(
            violations(ApiVersion::V4, with("profileHandle", json!(bad)), &OPEN),
            vec![v("/profileHandle", "length must be at most 100")]
        );
    }
    for bad in [json!(null), json!(1), json!({"h": 1})] {
        assert_eq!(
            violations(ApiVersion::V4, with("profileHandle", bad), &OPEN),
            vec![v("/profileHandle", "must be a string")]
        );
    }
}

/// Outside v4, profileHandle is an unknown field: any value passes, duplicates included.
#[test]
fn profile_handle_is_unknown_outside_v4() {
    for ver in [ApiVersion::V3, ApiVersion::V5] {
        for any in [
            json!(null),
            json!(1),
            json!("h".repeat(500)),
            json!({"a": [1]}),
        ] {
            ok(ver, with("profileHandle", any), &OPEN);
        }
        let dup = br#"{"userId":"u","deviceId":"d","profileHandle":1,"profileHandle":2}"#;
        assert!(validate(ver, dup, &OPEN).is_ok());
    }
    let dup = br#"{"userId":"u","deviceId":"d","profileHandle":"a","profileHandle":"b"}"#;
    assert_eq!(
        bad_request(ApiVersion::V4, dup),
        "duplicate key /profileHandle"
    );
}

// --- all violations at once -------------------------------------------------------------------

/// One Invalid carries every violation, in the table's order whatever the document's order.
#[test]
fn many_violations_reported_together_in_stable_order() {
    let want = vec![
        v("/userId", "must be a string"),
        v("/deviceId", "length must be 1 to 150"),
        v("/deviceInfo/kind", "must be one of ios, android, web, node"),
        v("/displayName", "length must be at most 100"),
        v("/authToken", "is required"),
    ];
    let forward = format!(
        r#"{{"userId":5,"deviceId":"","deviceInfo":{{"kind":"pc"}},"displayName":"{}"}}"#,
        "n".repeat(101)
    );
    let backward = format!(
        r#"{{"displayName":"{}","deviceInfo":{{"kind":"pc"}},"deviceId":"","userId":5}}"#,
        "n".repeat(101)
    );
    for body in [forward, backward] {
        assert_eq!(
            validate(ApiVersion::V3, body.as_bytes(), &SECURE),
            Err(ApiError::Invalid(want.clone()))
        );
    }
}

#[test]
fn every_rule_broken_at_once_in_v4() {
    let body = json!({
        "profileHandle": "h".repeat(101),
        "authToken": "",
        "displayName": null,
        "deviceInfo": {"sdkVersion": "1".repeat(31), "model": 1, "kind": "pc"},
    });
    assert_eq!(
        violations(ApiVersion::V4, body, &OPEN),
        vec![
            v("/userId", "is required"),
            v("/deviceId", "is required"),
            v("/deviceInfo/kind", "must be one of ios, android, web, node"),
            v("/deviceInfo/model", "must be a string"),
            v("/deviceInfo/sdkVersion", "length must be at most 30"),
            v("/displayName", "must be a string"),
            v("/authToken", "length must be 1 to 100"),
            v("/profileHandle", "length must be at most 100"),
        ]
    );
}

/// A wrong type in one field does not stop the others from being checked.
#[test]
fn type_errors_do_not_hide_other_violations() {
    let body = json!({"userId": {"nested": [1, {"x": null}]}, "deviceId": [[["d"]]], "deviceInfo": [1], "displayName": true});
    assert_eq!(
        violations(ApiVersion::V3, body, &OPEN),
        vec![
            v("/userId", "must be a string"),
            v("/deviceId", "must be a string"),
            v("/deviceInfo", "must be an object"),
            v("/displayName", "must be a string"),
        ]
    );
}

#[test]
fn empty_object_lacks_both_required_fields() {
    assert_eq!(
        validate(ApiVersion::V3, b"{}", &SECURE),
        Err(ApiError::Invalid(vec![
            v("/userId", "is required"),
            v("/deviceId", "is required"),
            v("/authToken", "is required"),
        ]))
    );
}

// --- unreadable bodies: 400 -------------------------------------------------------------------

#[test]
fn empty_body_is_bad_request() {
    for body in [&b""[..], b" ", b"\r\n\t "] {
        assert_eq!(bad_request(ApiVersion::V3, body), "body is empty");
    }
}

#[test]
fn non_object_top_level_is_bad_request() {
    for body in [
        &b"[]"[..],
        b"[{\"userId\":\"u\",\"deviceId\":\"d\"}]",
        b"\"str\"",
        b"1",
        b"-1",
        b"null",
        b"true",
        b"false",
    ] {
        assert_eq!(
            bad_request(ApiVersion::V3, body),
            "body must be a JSON object"
        );
    }
}

#[test]
fn malformed_json_is_bad_request() {
    let cases: [&[u8]; 11] = [
        b"{",
        b"{\"userId\"",
        b"{\"userId\":",
        b"{\"userId\":\"u\",}",
        b"{\"userId\":\"u\" \"deviceId\":\"d\"}",
        b"{userId:\"u\"}",
        b"{'userId':'u'}",
        b"{\"userId\":\"u\",\"deviceId\":\"d\",\"x\":[1,]}",
        b"{\"userId\":\"u\",\"deviceId\":\"d\",\"x\":tru}",
        b"{\"userId\":\"a\nb\",\"deviceId\":\"d\"}",
        b"{\"userId\":\"\\x\",\"deviceId\":\"d\"}",
    ];
    for body in cases {
        let detail = bad_request(ApiVersion::V3, body);
        assert!(detail.starts_with("malformed JSON"), "{detail}");
    }
}

/// A lone surrogate escape in a known field cannot become a Rust string: 400, not a panic.
/// The same for a string where `deviceInfo`'s object belongs: it is read too, to say what was
/// found instead (found by the `session` fuzz target, whose model had missed that case).
#[test]
fn lone_surrogate_in_known_field_is_bad_request() {
    for body in [
        &br#"{"userId":"\ud800","deviceId":"d"}"#[..],
        br#"{"userId":"u","deviceId":"d","deviceInfo":",{userId\uD800u/"}"#,
    ] {
        let detail = bad_request(ApiVersion::V3, body);
        assert!(detail.starts_with("malformed JSON"), "{detail}");
    }
}

/// The keys directly inside a known field's object value are read as text: one that is not
/// (a lone surrogate escape, a raw control character) makes the body a 400, where the same
/// key under an unknown field passes. Such a body is refused either way (the field is not a
/// string); reading those keys as raw bytes instead would let raw control characters through
/// (both found by the `session` fuzz target).
#[test]
fn keys_inside_a_wrongly_typed_known_field_must_be_text() {
    for body in [
        &br#"{"userId":{"\ud800":1},"deviceId":"d"}"#[..],
        b"{\"userId\":{\"a\x03\":1},\"deviceId\":\"d\"}",
        br#"{"userId":"u","deviceId":"d","deviceInfo":{"model":{"\udc00":1}}}"#,
    ] {
        let detail = bad_request(ApiVersion::V4, body);
        assert!(detail.starts_with("malformed JSON"), "{detail}");
    }
    let body = br#"{"userId":"u","deviceId":"d","x":{"\ud800":1},"y":[{"\udc00":1}]}"#;
    assert!(validate(ApiVersion::V4, body, &OPEN).is_ok());
}

#[test]
fn trailing_garbage_is_bad_request() {
    for body in [
        &b"{\"userId\":\"u\",\"deviceId\":\"d\"} x"[..],
        b"{\"userId\":\"u\",\"deviceId\":\"d\"}{}",
        b"{\"userId\":\"u\",\"deviceId\":\"d\"},",
        b"{\"userId\":\"u\",\"deviceId\":\"d\"}}",
        b"{\"userId\":\"u\",\"deviceId\":\"d\"}\0",
    ] {
        let detail = bad_request(ApiVersion::V3, body);
        assert!(
            detail.starts_with("malformed JSON: trailing characters"),
            "{detail}"
        );
    }
}

#[test]
fn duplicate_known_keys_are_bad_request() {
    let cases: [(&[u8], &str); 7] = [
        (
            br#"{"userId":"u","deviceId":"d","userId":"v"}"#,
            "duplicate key /userId",
        ),
        (
            br#"{"userId":"u","deviceId":"d","deviceId":"d"}"#,
            "duplicate key /deviceId",
        ),
        (
            br#"{"userId":"u","user\u0049d":"u","deviceId":"d"}"#,
            "duplicate key /userId",
        ),
        (
            br#"{"userId":"u","deviceId":"d","authToken":"a","authToken":"b"}"#,
            "duplicate key /authToken",
        ),
        (
            br#"{"userId":"u","deviceId":"d","displayName":1,"displayName":null}"#,
            "duplicate key /displayName",
        ),
        (
            br#"{"userId":"u","deviceId":"d","deviceInfo":{},"deviceInfo":{}}"#,
            "duplicate key /deviceInfo",
        ),
        (
            br#"{"userId":"u","deviceId":"d","deviceInfo":{"kind":"ios","kind":"web"}}"#,
            "duplicate key /deviceInfo/kind",
        ),
    ];
    for (body, detail) in cases {
        assert_eq!(bad_request(ApiVersion::V3, body), detail);
    }
    assert_eq!(
        bad_request(
            ApiVersion::V3,
            br#"{"deviceInfo":{"model":"a","sdkVersion":"1","model":"b"}}"#
        ),
        "duplicate key /deviceInfo/model"
    );
    assert_eq!(
        bad_request(
            ApiVersion::V3,
            br#"{"deviceInfo":{"sdkVersion":"1","sdkVersion":"1"}}"#
        ),
        "duplicate key /deviceInfo/sdkVersion"
    );
}

/// Duplicates of unknown keys are forwarded as they are (documented choice).
#[test]
fn duplicate_unknown_keys_pass() {
    let body = br#"{"userId":"u","x":1,"deviceId":"d","x":2,"deviceInfo":{"os":1,"os":2}}"#;
    assert!(validate(ApiVersion::V3, body, &OPEN).is_ok());
}

#[test]
fn invalid_utf8_anywhere_is_bad_request() {
    let cases: [&[u8]; 8] = [
        b"{\"userId\":\"\xff\",\"deviceId\":\"d\"}",
        b"{\"userId\":\"u\",\"deviceId\":\"d\",\"x\":\"\xc3\"}",
        b"{\"userId\":\"u\",\"deviceId\":\"d\",\"\xe9\":1}",
        b"{\"userId\":\"u\",\"deviceId\":\"d\",\"x\":[{\"y\":\"\xc0\xaf\"}]}",
        b"{\"userId\":\"u\",\"deviceId\":\"d\",\"deviceInfo\":{\"os\":\"\xed\xa0\x80\"}}",
        b"{\"userId\":\"u\",\"deviceId\":\"d\",\"deviceInfo\":{\"model\":\"\x80\"}}",
        b"{\"userId\":\"u\",\"deviceId\":\"d\"}\xff",
        b"\xef\xbb{}",
    ];
    for body in cases {
        assert_eq!(bad_request(ApiVersion::V3, body), "body is not valid UTF-8");
    }
}

// --- nesting ----------------------------------------------------------------------------------

fn nested(open: &str, close: &str, depth: usize) -> String {
    format!("{}1{}", open.repeat(depth), close.repeat(depth))
}

/// 10,000-deep arrays and objects are a 400 wherever they sit, never a stack overflow.
#[test]
fn deep_nesting_is_bad_request_everywhere() {
    const DEEP: usize = 10_000;
    let arrays = nested("[", "]", DEEP);
    let objects = nested(r#"{"a":"#, "}", DEEP);
    for inner in [&arrays, &objects] {
        let bodies = [
            format!(r#"{{"userId":"u","deviceId":"d","x":{inner}}}"#),
            format!(r#"{{"userId":{inner},"deviceId":"d"}}"#),
            format!(r#"{{"userId":"u","deviceId":"d","deviceInfo":{{"os":{inner}}}}}"#),
            format!(r#"{{"userId":"u","deviceId":"d","deviceInfo":{{"model":{inner}}}}}"#),
            format!(r#"{{"userId":"u","deviceId":"d","deviceInfo":{inner}}}"#),
        ];
        for body in bodies {
            for ver in ApiVersion::ALL {
                assert_eq!(
                    bad_request(ver, body.as_bytes()),
                    "body nests arrays/objects deeper than 128 levels"
                );
            }
        }
    }
    // At the top: an object nest is too deep, an array nest is not an object.
    assert_eq!(
        bad_request(ApiVersion::V3, objects.as_bytes()),
        "body nests arrays/objects deeper than 128 levels"
    );
    assert_eq!(
        bad_request(ApiVersion::V3, arrays.as_bytes()),
        "body must be a JSON object"
    );
    // Unterminated deep nests are refused too.
    let open_only = format!(r#"{{"x":{}"#, "[".repeat(DEEP));
    assert!(matches!(
        validate(ApiVersion::V3, open_only.as_bytes(), &OPEN),
        Err(ApiError::BadRequest(_))
    ));
}

/// Exactly [`MAX_DEPTH`] levels (top object included) pass; one more is refused.
#[test]
fn nesting_limit_boundary() {
    let body_at = |depth: usize| {
        let inner = nested("[", "]", depth - 1);
        format!(r#"{{"userId":"u","deviceId":"d","x":{inner}}}"#)
    };
    assert!(validate(ApiVersion::V3, body_at(MAX_DEPTH).as_bytes(), &OPEN).is_ok());
    assert!(matches!(
        validate(ApiVersion::V3, body_at(MAX_DEPTH + 1).as_bytes(), &OPEN),
        Err(ApiError::BadRequest(_))
    ));
    // Many siblings are not depth.
    let wide = format!(
        r#"{{"userId":"u","deviceId":"d","x":[{}]}}"#,
        vec!["[{}]"; 5_000].join(",")
    );
    assert!(validate(ApiVersion::V3, wide.as_bytes(), &OPEN).is_ok());
}

/// Brackets inside strings (escaped quotes included) are text, not nesting.
#[test]
fn brackets_inside_strings_do_not_count() {
    let text = format!(r#"\"{}\\"#, "[{".repeat(5_000));
    let body =
        format!(r#"{{"userId":"u","deviceId":"d","displayName":"x","note":"{text}","{text}":1}}"#);
    assert!(validate(ApiVersion::V3, body.as_bytes(), &OPEN).is_ok());
}

/// A number serde_json cannot represent (out of range) in a known field, where a string or
/// `deviceInfo`'s object belongs, is malformed JSON to the gateway: 400. Under an unknown
/// field it is skipped unread (found by the `session` fuzz target).
#[test]
fn out_of_range_numbers_in_known_fields_are_bad_requests() {
    for body in [
        &br#"{"userId":-0.5e+388888888,"deviceId":"d"}"#[..],
        br#"{"userId":"u","deviceId":"d","deviceInfo":-0.5e+388888888}"#,
        br#"{"userId":"u","deviceId":"d","deviceInfo":{"model":1e400}}"#,
    ] {
        let detail = bad_request(ApiVersion::V3, body);
        assert!(detail.starts_with("malformed JSON"), "{detail}");
    }
    let skipped = br#"{"userId":"u","deviceId":"d","x":-0.5e+388888888}"#;
    assert!(validate(ApiVersion::V3, skipped, &Rules { secure: false }).is_ok());
}
