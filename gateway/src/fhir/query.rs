//! Query strings: decoding `application/x-www-form-urlencoded` pairs (no I/O).

/// Decodes `a=b&c=d` with `%xx` and `+` escapes.
pub fn pairs(query: &str) -> Vec<(String, String)> {
    fn hex_value(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|digit| digit as u8)
    }
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut index = 0;
        while index < bytes.len() {
            let escaped = (bytes[index] == b'%' && index + 2 < bytes.len())
                .then(|| Some(hex_value(bytes[index + 1])? * 16 + hex_value(bytes[index + 2])?))
                .flatten();
            match (bytes[index], escaped) {
                (_, Some(byte)) => {
                    out.push(byte);
                    index += 3;
                }
                (b'+', None) => {
                    out.push(b' ');
                    index += 1;
                }
                (byte, None) => {
                    out.push(byte);
                    index += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_keeps_malformed_ones() {
        assert_eq!(
            pairs("identifier=http%3A%2F%2Fx%7C1&name=a+b&flag&bad=%zz%4"),
            vec![
                ("identifier".to_string(), "http://x|1".to_string()),
                ("name".to_string(), "a b".to_string()),
                ("flag".to_string(), String::new()),
                ("bad".to_string(), "%zz%4".to_string()),
            ]
        );
        assert_eq!(pairs("x=%C3%A9"), vec![("x".to_string(), "é".to_string())]);
        assert!(pairs("").is_empty());
    }
}
