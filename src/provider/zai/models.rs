//! The GLM models of the Z.AI web chat as data (providers-protocol.md §A.5.1–§A.5.2): the
//! public id a client asks for, the case-sensitive upstream id and the feature flags the
//! request body needs.
//!
//! The 2025 ids (`0727-360B-API` for GLM-4.5, `0727-106B-API`, `GLM-4-6-API-V1`,
//! `glm-4.5v`) are left out: no 2026 source uses them.

/// One model of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZaiModel {
    /// What a client asks for (matched case-insensitively by [`lookup`]).
    pub id: &'static str,
    /// The body's `model`, exactly as `GET /api/models` lists it (case-sensitive).
    pub upstream: &'static str,
    /// `features.enable_thinking` when the client does not say.
    pub thinking: bool,
    /// `features.auto_web_search` (Z.AI's own web search; `web_search` stays false).
    pub search: bool,
    /// Accepts images (`image_url` parts are kept).
    pub vision: bool,
    /// Takes `features.reasoning_effort` (`high`/`max`) while thinking.
    pub effort: bool,
    /// Answers guest tokens: since May 2026 guests get only `glm-4.7`, other models
    /// answer "Model not available for current user level".
    pub guest: bool,
}

const fn model(id: &'static str, upstream: &'static str) -> ZaiModel {
    ZaiModel {
        id,
        upstream,
        thinking: true,
        search: false,
        vision: false,
        effort: false,
        guest: false,
    }
}

/// The catalogue, in listing order. GLM-4.7's variants differ only in flags; the GLM-5
/// family and the vision models think by default (as the newest clients do).
static CATALOGUE: [ZaiModel; 9] = [
    ZaiModel {
        thinking: false,
        guest: true,
        ..model("GLM-4.7", "glm-4.7")
    },
    ZaiModel {
        guest: true,
        ..model("GLM-4.7-Thinking", "glm-4.7")
    },
    ZaiModel {
        thinking: false,
        search: true,
        guest: true,
        ..model("GLM-4.7-Search", "glm-4.7")
    },
    model("GLM-5", "glm-5"),
    model("GLM-5-Turbo", "GLM-5-Turbo"),
    model("GLM-5.1", "GLM-5.1"),
    ZaiModel {
        effort: true,
        ..model("GLM-5.2", "glm-5.2")
    },
    ZaiModel {
        vision: true,
        ..model("GLM-4.6V", "glm-4.6v")
    },
    ZaiModel {
        vision: true,
        ..model("GLM-5V-Turbo", "GLM-5v-Turbo")
    },
];

/// Every model, in listing order.
pub fn catalogue() -> &'static [ZaiModel] {
    &CATALOGUE
}

/// The model whose public id is `public_id`, ignoring ASCII case.
pub fn lookup(public_id: &str) -> Option<&'static ZaiModel> {
    CATALOGUE
        .iter()
        .find(|m| m.id.eq_ignore_ascii_case(public_id.trim()))
}

/// The flags for a configured model: the catalogue entry of its public id, else the first
/// with its upstream id, else a model that thinks when `reasoning` and sees when `images`
/// (an id the catalogue does not know yet, taken from the live `/api/models`).
pub fn for_entry(id: &str, upstream: &str, reasoning: bool, images: bool) -> ZaiModel {
    lookup(id)
        .or_else(|| CATALOGUE.iter().find(|m| m.upstream == upstream))
        .copied()
        .unwrap_or(ZaiModel {
            thinking: reasoning,
            vision: images,
            guest: upstream == "glm-4.7",
            ..model("", "")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case_and_keeps_upstream_case() {
        let m = lookup("glm-5-turbo").unwrap();
        assert_eq!((m.id, m.upstream), ("GLM-5-Turbo", "GLM-5-Turbo"));
        assert_eq!(lookup("glm-5v-turbo").unwrap().upstream, "GLM-5v-Turbo");
        assert_eq!(lookup("GLM-5.2").unwrap().upstream, "glm-5.2");
        assert_eq!(lookup(" glm-4.7 ").unwrap().upstream, "glm-4.7");
        assert!(lookup("glm-4.5").is_none());
        assert!(lookup("").is_none());
        assert!(lookup("glm-4.7-thinking-x").is_none());
    }

    #[test]
    fn flags() {
        let m = |id| *lookup(id).unwrap();
        assert!(!m("GLM-4.7").thinking && m("GLM-4.7-Thinking").thinking);
        assert!(m("GLM-4.7-Search").search && !m("GLM-4.7-Search").thinking);
        assert!(m("GLM-5").thinking && !m("GLM-5").search);
        // Effort: only GLM-5.2.
        let effort: Vec<_> = catalogue()
            .iter()
            .filter(|m| m.effort)
            .map(|m| m.id)
            .collect();
        assert_eq!(effort, ["GLM-5.2"]);
        // Guests: only the glm-4.7 family.
        assert!(catalogue()
            .iter()
            .all(|m| m.guest == (m.upstream == "glm-4.7")));
        let vision: Vec<_> = catalogue()
            .iter()
            .filter(|m| m.vision)
            .map(|m| m.id)
            .collect();
        assert_eq!(vision, ["GLM-4.6V", "GLM-5V-Turbo"]);
    }

    #[test]
    fn public_ids_are_unique_ignoring_case() {
        for (i, a) in catalogue().iter().enumerate() {
            for b in &catalogue()[i + 1..] {
                assert!(!a.id.eq_ignore_ascii_case(b.id), "{} / {}", a.id, b.id);
            }
            assert_eq!(lookup(a.id), Some(a));
        }
    }
}
