{#-
The script a shop adds to its pages, served by `GET /referral.js` (public/referral_js.py) with
the program's attribution window as `DAYS`. These Jinja comments are dropped when it is served.

- A landing with `ref` (and `click_id`, which `/r/<code>` adds) is kept in the first-party cookie
  `rs_referral` as `ref|click_id|landed` (each part percent-encoded, `landed` in Unix seconds),
  `Path=/`, `SameSite=Lax`, `Secure` on https, host-only unless the script tag names a domain
  (`data-cookie-domain`). It expires `DAYS` days after the landing, recomputed on each page from
  `landed`, so a window changed in the program applies to visitors already carrying the cookie.
- The last click wins, as the service's own click cookie: a landing with another referral or
  another click replaces the kept one and restarts the window; the same referral again (a reload
  of the landing page, or a link of the shop's own without `click_id`) changes nothing.
- No localStorage copy: a browser that refuses the cookie refuses storage too, and Safari's
  seven-day cap on script-set cookies applies to script-written storage as well.
- Forms: each `input[name=referral_code]` / `input[name=click_id]` found empty when first seen
  (on the page, added later, or at submit) gets the value; one the user or the page filled is
  left alone, and one seen is never touched again (a field the user cleared stays clear).
- Shopify (`window.Shopify`): the values are posted once per value and tab to the shop's own
  `cart/update.js` as cart attributes, which become the order's note attributes.
- `window.referral` is a frozen `{code, clickId}` (null when absent), and the `referral:ready`
  event on `document` carries the same object as `detail`.
Nothing else leaves the page, and no error escapes it.
-#}
/*! referral.js: keeps ?ref= and ?click_id= for {{ days }} days and fills them into forms */
(() => {
  "use strict";
  const DAYS = {{ days }};
  const WINDOW = DAYS * 86400;
  const NAME = "rs_referral";
  const REF = /^[^\u0000-\u001f\u007f]{1,64}$/;
  const CLICK = /^[\w-]{1,128}$/;
  const safe = (work) => (...args) => {
    try { return work(...args); } catch (error) { return undefined; } // never break the page
  };
  const now = () => Math.floor(Date.now() / 1000);
  const clean = (value, pattern) => {
    value = (value || "").trim();
    return pattern.test(value) ? value : "";
  };
  const read = safe(() => {
    const found = document.cookie.split(/; */).find((c) => c.startsWith(NAME + "="));
    if (!found) return null;
    const [ref, click, landed] = found.slice(NAME.length + 1).split("|").map(decodeURIComponent);
    const kept = { ref: clean(ref, REF), click: clean(click, CLICK), landed: +landed };
    return (kept.ref || kept.click) && kept.landed > 0 ? kept : null;
  });
  const write = safe((kept, seconds, domain) => {
    document.cookie =
      NAME + "=" + [kept.ref, kept.click, kept.landed].map(encodeURIComponent).join("|") +
      "; Max-Age=" + Math.max(0, Math.min(seconds, WINDOW)) + "; Path=/; SameSite=Lax" +
      (location.protocol === "https:" ? "; Secure" : "") + (domain ? "; Domain=" + domain : "");
  });
  const seen = new WeakSet();
  const fill = safe((root, fields) => {
    for (const [name, value] of fields) {
      const selector = "input[name=" + name + "]";
      const inputs = Array.from(root.querySelectorAll(selector));
      if (root.matches && root.matches(selector)) inputs.push(root);
      for (const input of inputs) {
        if (value && !seen.has(input) && !input.value) input.value = value;
        seen.add(input);
      }
    }
  });
  const post = safe((root, info) => {
    const value = info.code + "|" + info.clickId;
    if (safe(() => sessionStorage.getItem(NAME))() === value) return;
    root = /^\/(?!\/)/.test(root) ? root.replace(/\/?$/, "/") : "/";
    const attributes = { referral_code: info.code || "", click_id: info.clickId || "" };
    const headers = { "Content-Type": "application/json" };
    const body = JSON.stringify({ attributes: attributes });
    fetch(root + "cart/update.js", { method: "POST", credentials: "same-origin", headers, body })
      .then((response) => response.ok && sessionStorage.setItem(NAME, value))
      .catch(() => undefined);
  });

  safe(() => {
    const mark = Symbol.for("referral.js");
    if (window[mark]) return;
    window[mark] = true;
    const query = new URLSearchParams(location.search);
    const ref = clean(query.get("ref"), REF);
    const click = clean(query.get("click_id"), CLICK);
    const stored = read();
    let kept = stored && stored.landed + WINDOW > now() ? stored : null;
    if ((ref || click) && !(kept && ref === kept.ref && (!click || click === kept.click))) {
      kept = { ref: ref, click: click, landed: now() };
    }
    const script = document.currentScript;
    const domain = script && script.dataset.cookieDomain;
    if (kept || stored) write(kept || stored, kept ? kept.landed + WINDOW - now() : 0, domain);

    const info = Object.freeze({ code: (kept && kept.ref) || null, clickId: (kept && kept.click) || null });
    safe(() => Object.defineProperty(window, "referral", { value: info, enumerable: true }))();
    if (kept) {
      const fields = [["referral_code", info.code], ["click_id", info.clickId]];
      const observer = new MutationObserver(
        safe((records) => {
          for (const record of records) {
            for (const node of record.addedNodes) if (node.nodeType === 1) fill(node, fields);
          }
        })
      );
      fill(document, fields);
      safe(() => observer.observe(document.documentElement, { childList: true, subtree: true }))();
      document.addEventListener("DOMContentLoaded", () => fill(document, fields));
      document.addEventListener("submit", (event) => fill(event.target, fields), true);
      const shopify = window.Shopify;
      if (shopify) post(shopify.routes && String(shopify.routes.root), info);
    }
    document.dispatchEvent(new CustomEvent("referral:ready", { detail: info }));
  })();
})();
