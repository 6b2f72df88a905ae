/**
 * Type filters with globs, as the server understands them (`llm_*,stt_result`):
 * `*` any run of characters, `?` one character, `[...]` a character class.
 */

function globToRegexSource(glob) {
  let out = "";
  for (let i = 0; i < glob.length; i += 1) {
    const c = glob[i];
    if (c === "*") out += ".*";
    else if (c === "?") out += ".";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 1);
      if (end === -1) {
        out += "\\[";
      } else {
        let body = glob.slice(i + 1, end);
        if (body.startsWith("!")) body = `^${body.slice(1)}`;
        out += `[${body.replace(/\\/g, "\\\\")}]`;
        i = end;
      }
    } else out += c.replace(/[.+^${}()|\\]/g, "\\$&");
  }
  return out;
}

/** Split "a, b,c" into ["a", "b", "c"]; empty input gives []. */
export function parsePatterns(text) {
  return String(text ?? "")
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean);
}

/**
 * A predicate on type names for a list of globs (or a comma-separated
 * string). No patterns: everything matches. Invalid patterns match nothing.
 */
export function typeMatcher(patterns) {
  const list = Array.isArray(patterns) ? patterns : parsePatterns(patterns);
  if (list.length === 0) return () => true;
  let regex;
  try {
    regex = new RegExp(`^(?:${list.map(globToRegexSource).join("|")})$`);
  } catch (err) {
    return () => false;
  }
  const cache = new Map();
  return (type) => {
    let hit = cache.get(type);
    if (hit === undefined) {
      hit = regex.test(type);
      if (cache.size < 512) cache.set(type, hit);
    }
    return hit;
  };
}
