/* Guard console (console.md). Plain JavaScript, no libraries, nothing off this origin.
   Everything shown is built with textContent: decision data never becomes markup. */
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const boot = JSON.parse($("#boot").textContent || "{}");
  const csrf = $('meta[name="csrf"]').content;
  const accounts = boot.accounts || [];
  const reasonsList = boot.reasons || [];

  const OUTCOME = {
    admit: ["准许通行", "ADMIT", "✓"],
    deny: ["禁止通行", "DENY", "✕"],
    refer: ["人工核验", "CHECK BY HAND", "?"],
  };
  const ROLE = {
    staff: ["员工", "Staff"], closed_loop: ["闭环人员", "Closed-loop staff"], logistics: ["物流", "Logistics"],
    sales: ["销售", "Sales"], essential: ["保供人员", "Essential worker"], visitor: ["访客", "Visitor"],
  };
  const FLAG = {
    positive: ["阳性", "Positive"], close_contact: ["密接", "Close contact"],
    secondary_contact: ["次密接", "Secondary contact"], risk_area_travel: ["中高风险地区旅居史", "Risk-area travel"],
    itinerary_star: ["行程卡带星", "Itinerary star"], medicine_purchase: ["购买“四类药品”", "Bought listed medicines"],
    unreported_arrival: ["外地来返未报备", "Unreported arrival"], test_overdue: ["核酸超时", "Test overdue"],
  };
  const COLOUR = { green: ["绿码", "Green"], yellow: ["黄码", "Yellow"], red: ["红码", "Red"], unknown: ["未知", "Unknown"] };
  const KIND = {
    health: ["健康码", "Health code"], pass: ["通行证", "Truck pass"], dcc: ["欧盟证书", "EU certificate"],
    roster: ["名单码", "Roster code"], opaque: ["未知码", "Unknown code"], none: ["无码", "No code"],
    venue: ["场所码", "Venue code"],
  };
  const TEMP = { ok: null, stale: ["体温计离线", "Thermometer offline"], fault: ["体温计故障", "Thermometer fault"],
    absent: ["未测体温", "Not measured"] };
  const STATE = {
    camera: { ok: ["正常", "OK", "ok"], no_frames: ["无画面", "No frames", "bad"], absent: ["未接", "Absent", "bad"] },
    thermometer: { ok: ["正常", "OK", "ok"], stale: ["离线", "Offline", "bad"], fault: ["离线", "Offline", "bad"],
      absent: null },
    storage: { ok: ["正常", "OK", "ok"], warn: ["将满", "Nearly full", "warn"], prune: ["清理中", "Pruning", "warn"],
      full: ["已满", "Full", "bad"], error: ["错误", "Error", "bad"] },
    upload: { ok: ["正常", "OK", "ok"], backoff: ["重试中", "Retrying", "warn"], conflict: ["冲突", "Conflict", "bad"],
      blocked: ["受阻", "Blocked", "bad"], revoked: ["已吊销", "Revoked", "bad"], none: ["未连接", "Not enrolled", "warn"] },
  };
  const ERR = {
    bad_pin: (b) => [`密码错误，还可尝试 ${b.attempts_left} 次`, `Wrong PIN: ${b.attempts_left} tries left`],
    locked: (b, ra) => [`账号已锁定，${Math.ceil(ra / 60)} 分钟后再试`, `Account locked: try again in ${Math.ceil(ra / 60)} min`],
    rate_limited: () => ["请稍候一秒再试", "Wait a second and try again"],
    csrf: () => ["页面已过期，请刷新", "Page expired: reload it"],
    not_admin: () => ["需要管理员账号", "Needs an admin account"],
    not_overridable: () => ["不可人工放行", "Cannot be overridden"],
    too_old: () => ["决定已超过10分钟，不能改判", "Decision older than 10 min"],
    setup_active: () => ["设置模式已开启", "Set-up mode is already on"],
    bad_request: (b) => ["请求无效：" + (b.detail || ""), "Bad request: " + (b.detail || "")],
  };

  // -- language ---------------------------------------------------------------------------
  function t(zh, en) {
    const s = document.createElement("span");
    s.className = "t";
    const a = document.createElement("span"); a.lang = "zh"; a.textContent = zh;
    const b = document.createElement("span"); b.lang = "en"; b.textContent = en;
    s.append(a, b);
    return s;
  }
  function tp(pair, fallback) { return pair ? t(pair[0], pair[1]) : t(fallback, fallback); }
  function el(tag, cls, ...kids) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }
  function setLang(lang) {
    const big = lang === "en" ? "en" : "zh";
    document.documentElement.dataset.big = big;
    document.documentElement.lang = big === "zh" ? "zh-CN" : "en";
    try { localStorage.setItem("ck_lang", big); } catch (e) { /* private mode: keep default */ }
  }
  let stored = null;
  try { stored = localStorage.getItem("ck_lang"); } catch (e) { stored = null; }
  setLang(stored || "zh");
  $("#btn-lang").addEventListener("click", () => setLang(document.documentElement.dataset.big === "zh" ? "en" : "zh"));

  // -- sound (follows the buzzer patterns of hardware.md §3.2, once audio is allowed) ---------
  let audio = null;
  document.addEventListener("pointerdown", () => {
    if (!audio && window.AudioContext) { audio = new AudioContext(); }
    if (audio && audio.state === "suspended") { audio.resume(); }
  });
  function beep(on, off, n) {
    if (!audio || audio.state !== "running") return;
    let at = audio.currentTime + 0.01;
    for (let i = 0; i < n; i++) {
      const o = audio.createOscillator(); const g = audio.createGain();
      o.frequency.value = 880; g.gain.value = 0.2;
      o.connect(g); g.connect(audio.destination);
      o.start(at); o.stop(at + on);
      at += on + off;
    }
  }
  function sound(v) {
    const ids = (v.reasons || []).map((r) => r.id);
    if (ids.includes("gate-tailgate")) return beep(1.0, 0, 1);
    if (v.outcome === "deny" && ids.includes("fever")) return beep(0.3, 0.2, 5);
    if (v.outcome === "admit") return beep(0.1, 0, 1);
    if (v.outcome === "deny") return beep(0.15, 0.1, 3);
    return beep(0.15, 0.1, 2);
  }

  // -- decisions ----------------------------------------------------------------------------
  const decisions = new Map();     // seq -> view (ten newest)
  let live = false;                // replayed decisions (before the first status) make no sound
  let status = null;

  function newest() {
    const seqs = [...decisions.keys()].sort((a, b) => b - a);
    return seqs.map((s) => decisions.get(s));
  }
  function timeOf(wall) {
    const d = new Date(wall);
    return isNaN(d) ? "" : d.toLocaleTimeString("zh-CN", { hour12: false });
  }
  function fact(labelZh, labelEn, value) {
    const d = el("div", null, el("dt", null, t(labelZh, labelEn)), el("dd", null, value));
    return d;
  }
  function reasonItems(v) {
    const ul = el("ul", "reasons");
    for (const r of v.reasons || []) ul.append(el("li", null, t(r.zh, r.en)));
    return ul;
  }
  function effective(v) { return v.override ? v.override.to : v.outcome; }

  function renderPanel() {
    const panel = $("#panel");
    const box = $("#decision");
    box.replaceChildren();
    const list = newest();
    const v = list[0];
    if (!v) {
      panel.className = "panel outcome-idle";
      box.append(el("div", "outcome", el("span", "shape", "…"), wordOf(["等待扫码", "Waiting for a scan"])));
      return;
    }
    const oc = effective(v);
    panel.className = "panel outcome-" + oc;
    const o = OUTCOME[oc] || OUTCOME.refer;
    box.append(el("div", "outcome", el("span", "shape", o[2]), wordOf(o)));
    if (v.override) {
      box.append(el("div", "overridden", t(`已人工改判（原：${OUTCOME[v.outcome][0]}，${v.override.account}）`,
        `Overridden (was ${OUTCOME[v.outcome][1]}, by ${v.override.account})`)));
    }
    if (v.unverified) box.append(el("div", "unverified", t("未验证", "Unverified")));
    box.append(reasonItems(v));
    const dl = el("dl", "facts");
    const s = v.subject || {};
    if (s.name_m) dl.append(fact("姓名", "Name", s.name_m));
    if (s.role) dl.append(fact("岗位", "Role", tp(ROLE[s.role], s.role)));
    if (s.firm_id) dl.append(fact("单位", "Firm", s.firm_id + (s.whitelisted ? " ★" : "")));
    const h = v.health || {};
    if (h.code) {
      const chip = el("span", "chip " + h.code, tp(COLOUR[h.code], h.code));
      dl.append(fact("码色", "Code", chip));
    }
    if (h.flags && h.flags.length) {
      const f = el("span", null);
      h.flags.forEach((x, i) => { if (i) f.append("，"); f.append(tp(FLAG[x], x)); });
      dl.append(fact("风险", "Flags", f));
    }
    if (h.test_age_min !== null && h.test_age_min !== undefined) {
      const hours = Math.floor(h.test_age_min / 60);
      dl.append(fact("核酸", "Test", t(`${hours} 小时前`, `${hours} h ago`)));
    }
    const tm = v.temp || {};
    if (tm.body_centi_c !== null && tm.body_centi_c !== undefined) {
      dl.append(fact("体温", "Temp", (tm.body_centi_c / 100).toFixed(2) + " °C"));
    } else if (tm.status && TEMP[tm.status]) {
      dl.append(fact("体温", "Temp", tp(TEMP[tm.status])));
    }
    const p = v.pass;
    if (p) {
      if (p.pass_id) dl.append(fact("通行证", "Pass", p.pass_id));
      if (p.plate) dl.append(fact("车牌（请核对）", "Plate (compare)", el("b", null, p.plate)));
    }
    const c = v.credential || {};
    if (c.kind) dl.append(fact("凭证", "Code", tp(KIND[c.kind], c.kind)));
    box.append(dl);
  }
  function wordOf(pair) {
    const w = el("span", "word");
    const a = document.createElement("span"); a.lang = "zh"; a.textContent = pair[0];
    const b = document.createElement("span"); b.lang = "en"; b.textContent = pair[1];
    w.append(a, b);
    return w;
  }
  function renderHistory() {
    const ol = $("#history-list");
    ol.replaceChildren();
    for (const v of newest().slice(1)) {
      const oc = effective(v);
      const o = OUTCOME[oc] || OUTCOME.refer;
      const first = (v.reasons || [])[0];
      const main = el("span", "h-main", t(o[0], o[1]));
      if (v.subject && v.subject.name_m) main.append(" · " + v.subject.name_m);
      if (first) { main.append(" · "); main.append(t(first.zh, first.en)); }
      if (v.override) main.append(" · ", t("已改判", "overridden"));
      ol.append(el("li", oc, el("span", "h-shape", o[2]), el("span", "h-time", timeOf(v.at)), main));
    }
  }
  function announce(v) {
    const o = OUTCOME[effective(v)] || OUTCOME.refer;
    const first = (v.reasons || [])[0];
    $("#live").textContent = `${o[0]} ${o[1]}` + (first ? `: ${first.zh} / ${first.en}` : "");
  }
  function onDecision(v) {
    const isNew = !decisions.has(v.seq);
    decisions.set(v.seq, v);
    const seqs = [...decisions.keys()].sort((a, b) => b - a);
    for (const s of seqs.slice(10)) decisions.delete(s);
    if (live && isNew) { hidePrompt(["measure", "remeasure"]); sound(v); announce(v); }
    renderPanel();
    renderHistory();
  }

  // -- prompts ------------------------------------------------------------------------------
  let promptTimer = null;
  let promptKind = null;
  function hidePrompt(kinds) {
    if (kinds && promptKind && !kinds.includes(promptKind)) return;
    $("#prompt").hidden = true;
    promptKind = null;
    if (promptTimer) { clearInterval(promptTimer); promptTimer = null; }
  }
  function onPrompt(p) {
    if (!p.remaining_s || p.remaining_s <= 0) { hidePrompt([p.kind]); return; }
    hidePrompt();
    promptKind = p.kind;
    const box = $("#prompt");
    $(".prompt-text", box).replaceChildren(t(p.zh, p.en));
    let left = Math.ceil(p.remaining_s);
    const count = $(".prompt-count", box);
    count.textContent = left + " s";
    box.hidden = false;
    box.dataset.kind = p.kind;
    promptTimer = setInterval(() => {
      left -= 1;
      count.textContent = left + " s";
      if (left <= 0) hidePrompt();
    }, 1000);
  }

  // -- status bar ---------------------------------------------------------------------------
  function setItem(id, pair, level) {
    const item = $("#st-" + id);
    if (!pair) { item.classList.add("hidden-state"); return; }
    item.classList.remove("hidden-state", "ok", "warn", "bad");
    if (level) item.classList.add(level);
    $(".v", item).replaceChildren(Array.isArray(pair) ? t(pair[0], pair[1]) : pair);
  }
  function onStatus(s) {
    status = s;
    const b = s.gate && s.gate.binding;
    setItem("venue", b ? [`${b.venue_id} ${b.zone}${b.door ? " " + b.door : ""}`,
      `${b.venue_id} ${b.zone}${b.door ? " " + b.door : ""}`] : ["未绑定", "Not bound"], b ? "ok" : "warn");
    const mode = (s.mode && s.mode.mode) || "normal";
    setItem("mode", mode === "emergency" ? ["应急模式", "Emergency"] : ["常态", "Normal"], mode === "emergency" ? "bad" : "ok");
    $("#st-mode").classList.toggle("emergency", mode === "emergency");
    const bu = s.bundle || {};
    const bl = { fresh: "ok", stale: "warn", expired: "bad", none: "bad" }[bu.state] || "warn";
    const bt = { fresh: ["规则", "Rules"], stale: ["规则待更新", "Rules stale"], expired: ["规则已过期", "Rules expired"],
      none: ["无规则", "No rules"] }[bu.state] || ["规则", "Rules"];
    setItem("bundle", bu.version ? [`${bt[0]} v${bu.version}`, `${bt[1]} v${bu.version}`] : bt, bl);
    const ck = s.clock || {};
    const time = ck.now ? timeOf(ck.now) : "";
    const cp = { synced: [time, time], floor: ["时间未确认", "Clock not confirmed"], untrusted: ["时钟超前", "Clock ahead"] };
    setItem("clock", cp[ck.state] || [time, time], ck.state === "synced" ? "ok" : "warn");
    for (const part of ["camera", "thermometer", "storage", "upload"]) {
      const st = s[part] || {};
      const key = part === "storage" ? st.level : st.state;
      const e = STATE[part][key];
      if (e === null) { setItem(part, null); continue; }
      let pair = e ? [e[0], e[1]] : [String(key), String(key)];
      if (part === "upload" && st.backlog) pair = [`${pair[0]}，待传 ${st.backlog}`, `${pair[1]}, ${st.backlog} waiting`];
      setItem(part, pair, e ? e[2] : "warn");
    }
    const su = $("#st-setup");
    if (s.setup) {
      su.hidden = false;
      setItem("setup", [`设置模式 ${s.setup.remaining_s} 秒`, `Set-up ${s.setup.remaining_s} s`], "warn");
    } else { su.hidden = true; }
    const banners = $("#banners");
    banners.replaceChildren();
    for (const bn of s.banners || []) banners.append(el("div", "banner " + bn.level, t(bn.zh, bn.en)));
    for (const a of s.locked || []) {
      banners.append(el("div", "banner red", t(`账号 ${a} 已锁定 5 分钟`, `Account ${a} locked for 5 min`)));
    }
  }
  function link(ok) {
    // Shown only while the stream is down: a live console needs no word for it.
    setItem("link", ok ? ["已连接", "Live"] : ["连接中断", "Connection lost"], ok ? "ok" : "bad");
    $("#st-link").classList.toggle("quiet", ok);
  }

  // -- stream ---------------------------------------------------------------------------------
  function connect() {
    const es = new EventSource("/api/events/stream");
    es.addEventListener("open", () => link(true));
    es.addEventListener("decision", (e) => onDecision(JSON.parse(e.data)));
    es.addEventListener("prompt", (e) => onPrompt(JSON.parse(e.data)));
    es.addEventListener("status", (e) => { onStatus(JSON.parse(e.data)); live = true; });
    es.addEventListener("error", () => { link(false); live = false; });
  }
  link(false);
  connect();

  // -- dialogs ----------------------------------------------------------------------------------
  const modal = $("#modal");
  let submit = null;
  function field(labelZh, labelEn, ...kids) {
    return el("div", "field", el("div", "label", t(labelZh, labelEn)), ...kids);
  }
  function choices(items, onPick, selected) {
    const box = el("div", "choices");
    const buttons = [];
    for (const it of items) {
      const bt = el("button", "act", it.label);
      bt.type = "button";
      if (it.disabled) bt.disabled = true;
      if (it.value === selected) bt.classList.add("sel");
      bt.addEventListener("click", () => {
        buttons.forEach((x) => x.classList.remove("sel"));
        bt.classList.add("sel");
        onPick(it.value);
      });
      buttons.push(bt);
      box.append(bt);
    }
    return box;
  }
  function pinPad(state) {
    const display = el("div", "pin-display", "");
    display.setAttribute("aria-label", "PIN");
    const show = () => { display.textContent = "●".repeat(state.pin.length); };
    const pad = el("div", "pad");
    for (const k of ["1", "2", "3", "4", "5", "6", "7", "8", "9", "⌫", "0", "C"]) {
      const bt = el("button", "act", k);
      bt.type = "button";
      bt.dataset.key = k;
      if (k === "⌫") bt.setAttribute("aria-label", "删除 / Delete");
      if (k === "C") bt.setAttribute("aria-label", "清除 / Clear");
      bt.addEventListener("click", () => {
        if (k === "⌫") state.pin = state.pin.slice(0, -1);
        else if (k === "C") state.pin = "";
        else if (state.pin.length < 12) state.pin += k;
        show();
      });
      pad.append(bt);
    }
    show();
    const f = field("密码", "PIN", display, pad);
    f.classList.add("pin");
    return f;
  }
  function accountField(state, adminOnly) {
    const list = accounts.filter((a) => !adminOnly || a.role === "admin");
    if (!list.length) return el("p", "refusal", t("本门岗没有账号", "No accounts on this gate"));
    if (list.length === 1) state.account = list[0].id;
    return field("账号", "Account", choices(list.map((a) => ({ value: a.id, label: `${a.name} (${a.id})` })),
      (v) => { state.account = v; }, state.account));
  }
  function reasonField(state) {
    return field("原因", "Reason", choices(reasonsList.map((r) => ({ value: r.code, label: t(r.zh, r.en) })),
      (v) => { state.reason = v; }, state.reason));
  }
  function noteField(state) {
    const ta = el("textarea", "note");
    ta.maxLength = 200;
    ta.addEventListener("input", () => { state.note = ta.value; });
    return field("备注（可选）", "Note (optional)", el("div", "warn-text", t("请勿输入姓名、证件号、电话等个人信息",
      "Do not type names, id or phone numbers")), ta);
  }
  function openModal(titleZh, titleEn, body, onSubmit) {
    $("#modal-title").replaceChildren(t(titleZh, titleEn));
    $("#modal-body").replaceChildren(...body);
    $("#modal-error").hidden = true;
    $("#modal-ok").hidden = false;
    submit = onSubmit;
    modal.hidden = false;
  }
  function closeModal() { modal.hidden = true; submit = null; }
  function showError(pair) {
    const e = $("#modal-error");
    e.replaceChildren(t(pair[0], pair[1]));
    e.hidden = false;
  }
  $("#modal-cancel").addEventListener("click", closeModal);
  $("#modal-ok").addEventListener("click", () => { if (submit) submit(); });

  async function post(path, body) {
    let r;
    try {
      r = await fetch(path, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
    } catch (e) {
      showError(["无法连接门岗", "Cannot reach the gate"]);
      return null;
    }
    let data = {};
    try { data = await r.json(); } catch (e) { data = {}; }
    if (r.ok) return data;
    const ra = parseInt(r.headers.get("Retry-After") || "0", 10);
    const f = ERR[data.error];
    showError(f ? f(data, ra) : ["失败", "Failed"]);
    return null;
  }
  function need(state, keys) {
    for (const k of keys) {
      if (!state[k]) {
        const names = { to: ["请选择结果", "Pick a result"], outcome: ["请选择结果", "Pick a result"],
          reason: ["请选择原因", "Pick a reason"], account: ["请选择账号", "Pick an account"],
          pin: ["请输入密码", "Type the PIN"], decision: ["请选择决定", "Pick a decision"] };
        showError(names[k] || ["缺少内容", "Missing"]);
        return false;
      }
    }
    if (state.pin && state.pin.length < 6) { showError(["密码为6到12位数字", "A PIN is 6 to 12 digits"]); return false; }
    return true;
  }

  function nowMs() { return status && status.clock && status.clock.now ? Date.parse(status.clock.now) : Date.now(); }
  function eligible() {
    return newest().filter((v) => v.seq && ["deny", "refer"].includes(effective(v)) &&
      nowMs() - Date.parse(v.at) <= 10 * 60 * 1000);
  }
  $("#btn-override").addEventListener("click", () => {
    const list = eligible();
    const state = { decision: list.length ? list[0].seq : null, to: null, reason: null, note: "", account: null, pin: "" };
    const toBox = el("div");
    const rest = el("div", "rest");
    rest.append(reasonField(state), noteField(state), accountField(state, false));
    const pad = pinPad(state);
    function renderTo() {
      const v = decisions.get(state.decision);
      toBox.replaceChildren();
      state.to = null;
      if (!v) return;
      const items = [];
      if (v.overridable) items.push({ value: "admit", label: t("准许通行", "ADMIT") });
      if (effective(v) !== "deny") items.push({ value: "deny", label: t("禁止通行", "DENY") });
      if (!v.overridable) toBox.append(el("p", "refusal", t("不可人工放行", "Cannot be overridden")));
      if (items.length) toBox.append(field("改为", "Change to", choices(items, (x) => { state.to = x; })));
      // Nothing to choose: no reason, account or PIN to ask for.
      rest.hidden = pad.hidden = !items.length;
      $("#modal-ok").hidden = !items.length;
    }
    const body = [];
    if (!list.length) {
      body.push(el("p", "refusal", t("最近10分钟内没有可改判的决定", "No deny or refer in the last 10 min")));
    } else {
      body.push(field("决定", "Decision", choices(list.map((v) => {
        const o = OUTCOME[effective(v)];
        const lab = el("span", null, `${timeOf(v.at)} `, t(o[0], o[1]));
        if (v.subject && v.subject.name_m) lab.append(" " + v.subject.name_m);
        return { value: v.seq, label: lab };
      }), (x) => { state.decision = x; renderTo(); }, state.decision)));
      body.push(toBox, rest, pad);
    }
    openModal("人工改判", "Override", body, async () => {
      if (!list.length) { closeModal(); return; }
      if (!need(state, ["decision", "to", "reason", "account", "pin"])) return;
      const r = await post("/api/override", { decision_seq: state.decision, to: state.to, reason: state.reason,
        note: state.note, account: state.account, pin: state.pin });
      if (r) closeModal();
    });
    if (list.length) renderTo(); else $("#modal-ok").hidden = true;
  });
  $("#btn-manual").addEventListener("click", () => {
    const state = { outcome: null, reason: null, note: "", account: null, pin: "" };
    const body = [
      field("结果", "Result", choices([{ value: "admit", label: t("准许通行", "ADMIT") },
        { value: "deny", label: t("禁止通行", "DENY") }], (x) => { state.outcome = x; })),
      reasonField(state), noteField(state), accountField(state, false), pinPad(state),
    ];
    openModal("人工核验登记", "Checked by hand", body, async () => {
      if (!need(state, ["outcome", "reason", "account", "pin"])) return;
      const r = await post("/api/manual", { outcome: state.outcome, reason: state.reason, note: state.note,
        account: state.account, pin: state.pin });
      if (r) closeModal();
    });
  });
  $("#btn-setup").addEventListener("click", () => {
    const state = { account: null, pin: "" };
    const body = [el("p", null, t("设置模式：60秒内扫描场所码以绑定本门岗", "Set-up: scan a venue code within 60 s to bind this gate")),
      accountField(state, true), pinPad(state)];
    openModal("设置模式", "Set-up mode", body, async () => {
      if (!need(state, ["account", "pin"])) return;
      const r = await post("/api/setup", { account: state.account, pin: state.pin });
      if (r) closeModal();
    });
  });
})();
