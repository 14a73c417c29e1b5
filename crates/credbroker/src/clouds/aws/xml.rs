//! Just enough XML for STS: the text of elements at given paths, by local name.

use quick_xml::Reader;
use quick_xml::events::Event;

/// Collects the text of the elements whose local-name path (from the root, `/`-joined) is in
/// `wanted`, e.g. `AssumeRoleWithWebIdentityResponse/AssumeRoleWithWebIdentityResult/Credentials/AccessKeyId`.
/// Returns values in the order of `wanted` (`None` where absent), or `Err` for malformed XML.
pub fn extract(body: &str, wanted: &[&str]) -> Result<Vec<Option<String>>, String> {
    let mut reader = Reader::from_str(body);
    let mut path: Vec<String> = Vec::new();
    let mut out: Vec<Option<String>> = vec![None; wanted.len()];
    let mut current: Option<usize> = None;
    let mut seen_root = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                seen_root = true;
                path.push(e.local_name().as_ref().to_owned());
                if path.len() > 32 {
                    return Err("nesting deeper than 32 elements".into());
                }
                let joined = path.join("/");
                current = wanted.iter().position(|w| *w == joined);
                if let Some(i) = current {
                    out[i].get_or_insert_with(String::new);
                }
            }
            Ok(Event::Empty(_)) => seen_root = true,
            Ok(Event::End(_)) => {
                path.pop();
                current = None;
            }
            Ok(Event::Text(t)) => {
                if let Some(i) = current {
                    push(&mut out[i], &t.xml10_content());
                }
            }
            Ok(Event::CData(t)) => {
                if let Some(i) = current {
                    push(&mut out[i], &t.xml10_content());
                }
            }
            Ok(Event::GeneralRef(r)) => {
                if let Some(i) = current {
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        Ok(None) => match r.xml10_content().as_ref() {
                            "lt" => "<".into(),
                            "gt" => ">".into(),
                            "amp" => "&".into(),
                            "apos" => "'".into(),
                            "quot" => "\"".into(),
                            other => return Err(format!("unknown entity &{other};")),
                        },
                        Err(e) => return Err(e.to_string()),
                    };
                    push(&mut out[i], &resolved);
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "malformed XML at byte {}: {e}",
                    reader.buffer_position()
                ));
            }
        }
    }
    if !seen_root {
        return Err("no XML element".into());
    }
    if !path.is_empty() {
        return Err("truncated XML".into());
    }
    Ok(out
        .into_iter()
        .map(|v| v.map(|s| s.trim().to_string()))
        .collect())
}

fn push(slot: &mut Option<String>, text: &str) {
    slot.get_or_insert_with(String::new).push_str(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_by_path_with_namespaces_and_entities() {
        let xml = r#"<?xml version="1.0"?><a:R xmlns:a="urn:x"><a:B><C>one &amp; &#50;</C><C2><![CDATA[<raw>]]></C2></a:B><D/></a:R>"#;
        let got = extract(xml, &["R/B/C", "R/B/C2", "R/X"]).unwrap();
        assert_eq!(
            got,
            vec![Some("one & 2".into()), Some("<raw>".into()), None]
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(extract("not xml at all", &["a"]).is_err());
        assert!(extract("<a><b></a>", &["a"]).is_err());
        assert!(extract("<a><b>", &["a"]).is_err());
        assert!(extract("", &["a"]).is_err());
    }
}
