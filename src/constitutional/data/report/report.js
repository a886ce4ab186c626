// The SL-CAI trace browser. Model text is untrusted: it only ever reaches the page through textContent.
(function () {
  "use strict";
  const source = document.getElementById("trace-data");
  if (!source) return;
  const data = JSON.parse(source.textContent);
  const PAGE = 40; // traces rendered at a time; big runs hold thousands
  const search = document.getElementById("trace-search");
  const kindFilter = document.getElementById("trace-kind");
  const principleFilter = document.getElementById("trace-principle");
  const list = document.getElementById("trace-list");
  const count = document.getElementById("trace-count");
  const more = document.getElementById("trace-more");
  let shown = PAGE;

  function principleText(trace, id) {
    const known = data.principles[trace.constitution] || {};
    return known[id] || null;
  }

  // Everything a user might type to find a trace, lower-cased once.
  const haystacks = data.traces.map(function (trace) {
    const parts = [trace.id, trace.kind, trace.model, trace.initial];
    trace.prompt.forEach(function (m) { parts.push(m.content); });
    trace.steps.forEach(function (s) {
      parts.push(s.principle, s.critique || "", s.revision, principleText(trace, s.principle) || "");
    });
    return parts.join("\n").toLowerCase();
  });

  function fillPrincipleFilter() {
    const counts = {};
    data.traces.forEach(function (trace) {
      new Set(trace.steps.map(function (s) { return s.principle; })).forEach(function (id) {
        counts[id] = (counts[id] || 0) + 1;
      });
    });
    Object.keys(counts).sort().forEach(function (id) {
      const option = document.createElement("option");
      option.value = id;
      option.textContent = id + " (" + counts[id] + ")";
      principleFilter.appendChild(option);
    });
  }

  function matches(index) {
    const trace = data.traces[index];
    if (kindFilter.value && trace.kind !== kindFilter.value) return false;
    if (principleFilter.value && !trace.steps.some(function (s) { return s.principle === principleFilter.value; })) {
      return false;
    }
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    return words.every(function (word) { return haystacks[index].indexOf(word) !== -1; });
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function turn(who, text, extraClass) {
    const box = el("div", "turn" + (extraClass ? " " + extraClass : ""));
    box.appendChild(el("div", "who", who));
    box.appendChild(el("div", "text", text));
    return box;
  }

  function renderTrace(trace, open) {
    const details = el("details", "trace");
    details.open = open;
    details.dataset.kind = trace.kind;
    const summary = el("summary");
    summary.appendChild(el("span", "badge " + trace.kind, trace.kind.replace("_", "-")));
    const lastUser = trace.prompt.filter(function (m) { return m.role === "user"; }).pop();
    summary.appendChild(el("span", "prompt-line", lastUser ? lastUser.content : ""));
    summary.appendChild(el("span", "trace-id", trace.id + " · " + trace.steps.length + " step(s)"));
    details.appendChild(summary);

    const body = el("div", "trace-body");
    trace.prompt.forEach(function (m) { body.appendChild(turn(m.role, m.content)); });
    body.appendChild(turn("initial answer", trace.initial, trace.steps.length ? "" : "final"));
    trace.steps.forEach(function (step, i) {
      const box = el("div", "step");
      const head = el("div");
      head.appendChild(el("strong", null, "Revision " + (i + 1) + " "));
      head.appendChild(el("span", "badge principle", step.principle));
      box.appendChild(head);
      const text = principleText(trace, step.principle);
      if (text) box.appendChild(el("div", "principle-text", text));
      if (step.critique !== null) box.appendChild(turn("critique", step.critique));
      box.appendChild(turn("revision", step.revision, i === trace.steps.length - 1 ? "final" : ""));
      body.appendChild(box);
    });
    body.appendChild(el("div", "trace-meta", "model " + trace.model + " · constitution " + trace.constitution));
    details.appendChild(body);
    return details;
  }

  function render() {
    const hits = [];
    data.traces.forEach(function (_, i) { if (matches(i)) hits.push(i); });
    list.replaceChildren();
    hits.slice(0, shown).forEach(function (index, position) {
      list.appendChild(renderTrace(data.traces[index], position === 0));
    });
    const visible = Math.min(shown, hits.length);
    count.textContent = hits.length === data.traces.length
      ? "Showing " + visible + " of " + data.traces.length + " traces"
      : "Showing " + visible + " of " + hits.length + " matching (" + data.traces.length + " traces)";
    more.hidden = hits.length <= shown;
    if (hits.length === 0) list.appendChild(el("p", "missing", "No trace matches these filters."));
  }

  function restart() { shown = PAGE; render(); }

  fillPrincipleFilter();
  search.addEventListener("input", restart);
  kindFilter.addEventListener("change", restart);
  principleFilter.addEventListener("change", restart);
  more.addEventListener("click", function () { shown += PAGE; render(); });
  render();
})();
