// How the page names a class: once when the name is the index itself ("7", never "7: 7"),
// "3: cat" when it is not, and the model card's aliases after it: "7 (seven)".

/**
 * The aliases the model card lists for class `index`. `class_aliases` may be a list per class
 * (each entry a string or a list of strings) or an object keyed by class name or index.
 */
export function aliasesOf(card, index) {
  const table = card.class_aliases;
  if (!table) return [];
  const name = card.class_names?.[index];
  const entry = Array.isArray(table) ? table[index] : (table[name] ?? table[String(index)]);
  if (entry === undefined || entry === null) return [];
  return (Array.isArray(entry) ? entry : [entry]).map(String);
}

/** The text of class `index`'s option; `name` may be missing (unnamed classes). */
export function classOption(index, name, aliases = []) {
  const id = String(index);
  const base = name === undefined || name === null || name === '' || name === id ? id : `${id}: ${name}`;
  const extra = [...new Set(aliases)].filter((a) => a !== id && a !== name);
  return extra.length ? `${base} (${extra.join(', ')})` : base;
}
