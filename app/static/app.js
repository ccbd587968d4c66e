/* 以文搜图 / 以图搜图 — the page's script. Plain JS, no framework, no external resources.
 *
 * API: POST /img/search, POST /img/search/image, GET /img/images/{c}/{id}[/meta],
 * GET /img/collections, GET /img/models, POST /img/load, GET /img/jobs[/{id}],
 * POST /img/images/{c}. Errors are {"error": {"code", "message", "details"}};
 * a 503 carries Retry-After and is retried a few times.
 */
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const STORE = { collection: "imgsearch.collection", apiKey: "imgsearch.apiKey", topK: "imgsearch.topK" };
  const MAX_503_RETRIES = 3;
  const POLL_MS = 500;
  const TERMINAL = new Set(["succeeded", "failed", "interrupted", "cancelled"]);
  const STATE_LABELS = {
    queued: "排队中", running: "进行中", succeeded: "已完成", failed: "失败",
    interrupted: "已中断", cancelled: "已取消",
  };
  const KIND_LABELS = { load: "导入", add: "批量添加", ocr: "文字识别" };

  const el = {
    collection: $("collection-select"), collectionsRefresh: $("collections-refresh"), modelInfo: $("model-info"),
    form: $("search-form"), query: $("query-input"), dropZone: $("drop-zone"), imageInput: $("image-input"),
    topK: $("topk-input"), minScore: $("min-score-input"), sources: $("filter-sources"), tags: $("filter-tags"),
    from: $("filter-from"), to: $("filter-to"), filtersClear: $("filters-clear"),
    options: $("search-options"), filtersActive: $("filters-active"),
    status: $("status"), statusText: $("status-text"), statusRetry: $("status-retry"),
    summary: $("query-summary"), summaryText: $("query-summary-text"), preview: $("query-preview"),
    results: $("results"), template: $("result-template"), resultsMore: $("results-more"),
    order: $("order-select"), cutAuto: $("cut-auto"),
    feedbackBar: $("feedback-bar"), feedbackText: $("feedback-text"), feedbackClear: $("feedback-clear"),
    modal: $("image-modal"), modalTitle: $("modal-title"), modalClose: $("modal-close"), modalImage: $("modal-image"),
    modalScore: $("modal-score"), modalMeta: $("modal-meta"), modalSimilar: $("modal-find-similar"),
    modalOriginal: $("modal-open-original"),
    modalOcr: $("modal-ocr"), modalOcrStatus: $("modal-ocr-status"), modalOcrLines: $("modal-ocr-lines"),
    apiKey: $("api-key"), apiKeyBox: $("api-key-box"),
    loadForm: $("load-form"), loadDataset: $("load-dataset"), loadSplit: $("load-split"),
    loadCollection: $("load-collection"), loadStart: $("load-start"),
    bulkForm: $("bulk-form"), bulkFiles: $("bulk-files"), bulkCollection: $("bulk-collection"),
    bulkSource: $("bulk-source"), bulkTags: $("bulk-tags"), bulkStart: $("bulk-start"),
    panelMessage: $("panel-message"), bulkResults: $("bulk-results"),
    job: $("job-progress"), jobTitle: $("job-title"), jobState: $("job-state"), jobBar: $("job-bar"),
    jobBarFill: $("job-bar-fill"), jobCounts: $("job-counts"), jobRate: $("job-rate"), jobMessage: $("job-message"),
    jobCancel: $("job-cancel"), jobResume: $("job-resume"), jobFailuresBox: $("job-failures-box"),
    jobFailuresSummary: $("job-failures-summary"), jobFailures: $("job-failures"),
    jobsList: $("jobs-list"), jobsRefresh: $("jobs-refresh"),
  };

  const state = {
    collections: [],          // [{name, model, dim, index_type, vectors, images}]
    lastSearch: null,         // () => Promise, to re-run with the retry button
    searchSeq: 0,             // bumps on every search started; stale answers are dropped
    renderSeq: 0,             // bumps on every rendered outcome (tests wait on #results[data-seq])
    queryObjectUrl: null,
    modalOpener: null,
    modalItem: null,
    watchedJob: null,
    pollTimer: null,
    // Relevance feedback of the current text query: ids clicked 更像这个 / 不要这种.
    feedback: { query: "", positive: new Set(), negative: new Set() },
  };
  const TIER_LABELS = { relevant: "相关", maybe: "可能相关" };

  // ---------------------------------------------------------------- helpers

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function storageGet(key) {
    try { return localStorage.getItem(key); } catch { return null; }
  }
  function storageSet(key, value) {
    try {
      if (value === null || value === "") localStorage.removeItem(key); else localStorage.setItem(key, value);
    } catch { /* private mode: not remembered */ }
  }

  function splitList(value) {
    return (value || "").split(/[,，]/).map((v) => v.trim()).filter(Boolean);
  }

  function formatScore(score) {
    return `相似度 ${Number(score).toFixed(3)}`;
  }

  function formatTime(unixSeconds) {
    if (unixSeconds === null || unixSeconds === undefined) return "—";
    const d = new Date(unixSeconds * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} 秒`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} 分 ${s % 60} 秒`;
    return `${Math.floor(m / 60)} 小时 ${m % 60} 分`;
  }

  /** Local midnight of a yyyy-mm-dd date, in unix seconds; `endOfDay` gives 23:59:59. */
  function dateToUnix(value, endOfDay) {
    if (!value) return null;
    const d = new Date(`${value}T${endOfDay ? "23:59:59" : "00:00:00"}`);
    const t = Math.floor(d.getTime() / 1000);
    return Number.isFinite(t) && t >= 0 ? t : null;
  }

  /** A thumbnail URL at another size (the API serves 64/128/256/512). */
  function withSize(url, size) {
    return url.replace(/([?&])size=\d+/, `$1size=${size}`);
  }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(kind, status, code, message, details) {
      super(message);
      this.kind = kind;       // "http" | "network" | "busy"
      this.status = status;
      this.code = code;
      this.details = details || {};
    }
  }

  function retryAfterSeconds(res) {
    const raw = res.headers.get("Retry-After");
    let s = raw && /^\d+(\.\d+)?$/.test(raw.trim()) ? Number(raw) : NaN;
    if (!Number.isFinite(s) && raw) {
      const at = Date.parse(raw);
      if (Number.isFinite(at)) s = (at - Date.now()) / 1000;
    }
    if (!Number.isFinite(s)) s = 2;
    return Math.min(30, Math.max(1, s));
  }

  async function errorFrom(res) {
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    const err = body && body.error;
    if (err && err.message) return new ApiError("http", res.status, err.code || "", err.message, err.details);
    if (body && typeof body.detail === "string") return new ApiError("http", res.status, "", body.detail);
    return new ApiError("http", res.status, "", `服务器返回 ${res.status} ${res.statusText || ""}`.trim());
  }

  /**
   * fetch + JSON + the error shape. 503: wait Retry-After and retry (up to
   * MAX_503_RETRIES), telling `onRetry(attempt, seconds, message)` each time.
   */
  async function api(path, { method = "GET", json, form, write = false, onRetry, retries = MAX_503_RETRIES } = {}) {
    const headers = { Accept: "application/json" };
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    if (write) {
      const key = el.apiKey.value.trim();
      if (key) headers["X-API-Key"] = key;
    }
    for (let attempt = 0; ; attempt++) {
      let res;
      try {
        res = await fetch(path, { method, headers, body });
      } catch (e) {
        throw new ApiError("network", 0, "network", "网络错误：无法连接到服务器，请检查网络后重试。");
      }
      if (res.status === 503) {
        const err = await errorFrom(res.clone());
        if (attempt < retries) {
          const wait = retryAfterSeconds(res);
          if (onRetry) onRetry(attempt + 1, wait, err.message);
          await sleep(wait * 1000);
          continue;
        }
        throw new ApiError("busy", 503, err.code, err.message, err.details);
      }
      if (!res.ok) throw await errorFrom(res);
      if (res.status === 204) return { status: 204, data: null };
      const data = await res.json();
      return { status: res.status, data };
    }
  }

  // --------------------------------------------------------------- status

  function setStatus(kind, text, { retry = false, detail = "" } = {}) {
    el.status.dataset.state = kind;
    el.statusText.textContent = text + (detail ? `（${detail}）` : "");
    el.statusRetry.hidden = !retry;
  }

  function describeError(err) {
    if (err.kind === "network") return { kind: "network", text: err.message, retry: true };
    if (err.kind === "busy") {
      return { kind: "busy-failed", text: `服务暂时不可用，已重试 ${MAX_503_RETRIES} 次仍失败：${err.message}`, retry: true };
    }
    const prefix = {
      400: "请求无效", 401: "没有权限", 404: "找不到", 409: "冲突", 413: "文件太大", 415: "不是可识别的图片",
      422: "输入有误",
    }[err.status] || `出错了（${err.status}）`;
    return { kind: "error", text: `${prefix}：${err.message}`, retry: err.status >= 500 };
  }

  // ---------------------------------------------------------- collections

  function currentCollection() {
    return el.collection.value || null;
  }

  function collectionInfo(name) {
    return state.collections.find((c) => c.name === name) || null;
  }

  /**
   * (Re)read the collections. `preferred` (the target of a finished job) is
   * selected only when the current choice is missing or still empty, so a
   * background job never swaps the collection under results being viewed.
   */
  async function loadCollections(preferred) {
    const loaded = el.collection.dataset.loaded === "true";
    const previous = loaded ? el.collection.value : "";
    const previousInfo = collectionInfo(previous);
    const current = previous || (loaded ? "" : storageGet(STORE.collection) || "");
    const wanted = preferred && (!previousInfo || previousInfo.images === 0) ? preferred : current;
    try {
      const { data } = await api("/img/collections", {
        onRetry: (n, wait, message) => setStatus("busy", `服务繁忙，正在重试…（第 ${n} 次，${Math.round(wait)} 秒后；${message}）`),
      });
      state.collections = data;
    } catch (err) {
      el.collection.replaceChildren(new Option("（无法读取集合）", ""));
      setStatus(describeError(err).kind, `读取集合列表失败：${err.message}`, { retry: false });
      return;
    }
    el.collection.replaceChildren();
    if (!state.collections.length) {
      el.collection.append(new Option("（还没有集合，请先导入）", ""));
    }
    for (const c of state.collections) {
      const opt = new Option(`${c.name} — ${c.model} · ${c.images} 张`, c.name);
      opt.dataset.images = String(c.images);
      el.collection.append(opt);
    }
    if (wanted && collectionInfo(wanted)) el.collection.value = wanted;
    el.collection.dataset.loaded = "true";
    onCollectionChanged(loaded && el.collection.value !== previous);
  }

  function onCollectionChanged(userAction) {
    const name = currentCollection();
    if (userAction) storageSet(STORE.collection, name);
    const info = collectionInfo(name);
    el.loadCollection.placeholder = name || "默认集合";
    el.bulkCollection.placeholder = name || "当前集合";
    if (info) {
      el.modelInfo.textContent = `模型 ${info.model} · ${info.dim} 维 · 索引 ${info.index_type} · ${info.images} 张图片`;
    }
    if (!state.collections.length) {
      showEmpty("no-collection", "还没有任何集合。在“导入数据集”里导入一个数据集即可开始搜索。");
    } else if (info && info.images === 0) {
      showEmpty("empty-collection", "该集合还没有图片。可以在右侧导入数据集或批量添加图片。");
    } else if (userAction || ["empty-collection", "no-collection", "busy", "idle"].includes(el.status.dataset.state)) {
      clearResults();
      setStatus("idle", "输入一句中文描述，或上传一张照片开始搜索。");
    }
  }

  async function loadModels() {
    try {
      const { data } = await api("/img/models");
      if (!el.modelInfo.textContent) {
        el.modelInfo.textContent = `默认模型 ${data.default} · ${data.dim} 维`;
      }
      el.modelInfo.title = `可用模型：${(data.available || []).join("，")}`;
    } catch { /* the collections line says enough */ }
  }

  // --------------------------------------------------------------- search

  function readOptions() {
    let topK = parseInt(el.topK.value, 10);
    if (!Number.isFinite(topK)) topK = 12;
    topK = Math.min(100, Math.max(1, topK));
    el.topK.value = String(topK);
    storageSet(STORE.topK, String(topK));
    const minRaw = el.minScore.value.trim();
    let minScore = minRaw === "" ? null : Number(minRaw);
    if (minScore !== null && !Number.isFinite(minScore)) minScore = null;
    if (minScore !== null) minScore = Math.min(1, Math.max(-1, minScore));
    const filters = {
      sources: splitList(el.sources.value),
      tags: splitList(el.tags.value),
      created_from: dateToUnix(el.from.value, false),
      created_to: dateToUnix(el.to.value, true),
    };
    const order = el.order.value;
    return {
      topK, minScore, filters,
      orderBy: order === "relevance" ? "relevance" : "created_at",
      order: order === "oldest" ? "asc" : "desc",
      cut: el.cutAuto.checked ? "auto" : "none",
    };
  }

  /** "已启用 n 项" next to the options toggle, so collapsed filters are never forgotten. */
  function updateFiltersBadge() {
    const n = [el.minScore, el.sources, el.tags, el.from, el.to].filter((i) => i.value.trim() !== "").length;
    el.filtersActive.textContent = n ? `（已启用 ${n} 项）` : "";
    el.filtersActive.dataset.count = String(n);
  }

  function filtersActive(f) {
    return f.sources.length || f.tags.length || f.created_from !== null || f.created_to !== null;
  }

  function clearResults() {
    el.results.replaceChildren();
    el.summary.hidden = true;
  }

  function showEmpty(kind, text) {
    clearResults();
    setStatus(kind, text);
    el.results.dataset.count = "0";
  }

  /** Run one search; `describe` is the summary line, `call` does the request. */
  async function runSearch(kind, describe, call, previewUrl, queryId) {
    const seq = ++state.searchSeq;
    const collection = currentCollection();
    state.lastSearch = () => runSearch(kind, describe, call, previewUrl, queryId);
    setStatus("loading", "正在搜索…");
    el.results.setAttribute("aria-busy", "true");
    el.form.classList.add("busy");
    const opts = readOptions();
    try {
      const { data } = await call(opts, collection, {
        onRetry: (attempt, wait, message) => {
          if (seq !== state.searchSeq) return;
          setStatus("busy", `服务繁忙，正在重试…（第 ${attempt} 次，${Math.round(wait)} 秒后；${message}）`);
        },
      });
      if (seq !== state.searchSeq) return;
      renderResults(data, kind, describe, opts, previewUrl, queryId);
    } catch (err) {
      if (seq !== state.searchSeq) return;
      el.results.dataset.kind = kind;
      el.results.dataset.queryId = queryId ? String(queryId) : "";
      if (err.status === 404 && err.details && err.details.collection && !err.details.image_id) {
        showEmpty("empty-collection", `该集合还没有图片（${err.message}）。`);
      } else {
        const d = describeError(err);
        clearResults();
        setStatus(d.kind, d.text, { retry: d.retry });
      }
      el.results.dataset.seq = String(++state.renderSeq);
    } finally {
      if (seq === state.searchSeq) {
        el.results.removeAttribute("aria-busy");
        el.form.classList.remove("busy");
      }
    }
  }

  function renderResults(data, kind, describe, opts, previewUrl, queryId) {
    const items = data.results || [];
    el.results.replaceChildren();
    el.results.dataset.kind = kind;
    el.results.dataset.queryId = queryId ? String(queryId) : "";
    el.results.dataset.count = String(items.length);
    el.results.dataset.collection = data.collection;
    el.results.dataset.calibrated = data.calibrated ? "true" : "false";
    const frag = document.createDocumentFragment();
    // Calibrated results: 相关 and 可能相关 shown, the rest behind the "more" control (shown
    // anyway when nothing is relevant, so a search never looks empty when it is not).
    const tiered = Boolean(data.calibrated) && items.some((i) => i.tier === "relevant" || i.tier === "maybe");
    let hiddenCount = 0;
    for (const item of items) {
      const card = resultCard(item, data.collection, kind);
      if (tiered && item.tier === "other") {
        card.classList.add("tier-other");
        card.hidden = true;
        hiddenCount += 1;
      }
      frag.append(card);
    }
    el.results.append(frag);
    el.results.dataset.hidden = String(hiddenCount);
    el.resultsMore.hidden = hiddenCount === 0;
    el.resultsMore.setAttribute("aria-expanded", "false");
    el.resultsMore.textContent = `更多结果（${hiddenCount} 张相关度较低）`;
    updateFeedbackBar();

    el.summaryText.textContent = `${describe} · ${items.length} 条结果 · 集合 ${data.collection} · 模型 ${data.model}`
      + (data.timings_ms && data.timings_ms.total !== undefined ? ` · ${Math.round(data.timings_ms.total)} ms` : "");
    el.preview.hidden = !previewUrl;
    if (previewUrl) el.preview.src = previewUrl;
    el.summary.hidden = false;

    if (items.length) {
      const order = opts.orderBy === "created_at" ? (opts.order === "asc" ? "按创建时间从早到晚" : "按创建时间从新到旧")
        : "按相似度从高到低";
      const rel = data.calibrated ? "相关度是校准后的匹配概率估计" : `没有相关度：${data.relevance_note || "模型未校准"}`;
      setStatus("results", `找到 ${items.length} 张图片，${order}排列（相似度为余弦值，不是概率；${rel}）。`);
    } else {
      const info = collectionInfo(data.collection);
      if (info && info.images === 0) {
        setStatus("empty-collection", "该集合还没有图片。可以在右侧导入数据集或批量添加图片。");
      } else if (opts.minScore !== null) {
        setStatus("no-results", `没有相似度不低于 ${opts.minScore} 的结果。可以调低“最低相似度”再试。`);
      } else if (filtersActive(opts.filters)) {
        setStatus("no-results", "没有符合筛选条件的图片。可以放宽来源、标签或日期再试。");
      } else {
        setStatus("no-results", "没有找到结果。");
      }
    }
    el.results.dataset.seq = String(++state.renderSeq);
  }

  function resultCard(item, collection, kind) {
    const node = el.template.content.firstElementChild.cloneNode(true);
    node.dataset.id = String(item.id);
    node.dataset.score = String(item.score);
    node.dataset.rank = String(item.rank);
    const img = node.querySelector(".thumb-img");
    img.src = item.thumbnail_url;
    img.srcset = `${item.thumbnail_url} 1x, ${withSize(item.thumbnail_url, 512)} 2x`;
    img.alt = `第 ${item.rank} 名，图片 ${item.id}`;
    img.addEventListener("load", () => img.classList.add("loaded"), { once: true });
    img.addEventListener("error", () => node.classList.add("thumb-failed"), { once: true });
    const open = node.querySelector(".thumb");
    open.id = `result-open-${item.id}`;
    open.setAttribute("aria-label", `查看图片 ${item.id}（第 ${item.rank} 名，${formatScore(item.score)}）`);
    open.addEventListener("click", () => openModal(item, collection, open));
    node.querySelector(".rank").textContent = `#${item.rank}`;
    const score = node.querySelector(".score");
    score.textContent = formatScore(item.score);
    score.title = `余弦相似度 ${item.score}（范围 -1 到 1，不是概率）`;
    node.querySelector(".result-id").textContent = `ID ${item.id}`;
    if (item.ocr_text) {
      // Found by the text read in the image (OCR): show the line that matched.
      const match = node.querySelector(".ocr-match");
      match.textContent = `图中文字：${item.ocr_text}`;
      match.title = item.signals && item.signals.includes("visual") ? "文字和画面都匹配" : "文字匹配";
      match.hidden = false;
    }
    node.dataset.tier = item.tier || "";
    if (item.relevance !== null && item.relevance !== undefined) {
      const rel = node.querySelector(".relevance");
      rel.hidden = false;
      rel.textContent = `相关度 ${Number(item.relevance).toFixed(2)}`;
      rel.title = "校准后的估计：这张图片符合查询的概率（0 到 1）";
      node.dataset.relevance = String(item.relevance);
    }
    if (TIER_LABELS[item.tier]) {
      const tier = node.querySelector(".tier");
      tier.hidden = false;
      tier.textContent = TIER_LABELS[item.tier];
      tier.classList.add(`tier-${item.tier}`);
    }
    const fbButtons = node.querySelector(".feedback-buttons");
    if (kind === "text") {
      const more = node.querySelector(".more-like");
      const less = node.querySelector(".less-like");
      more.setAttribute("aria-label", `更像图片 ${item.id}：按它重新搜索`);
      less.setAttribute("aria-label", `不要图片 ${item.id} 这种：按它重新搜索`);
      more.setAttribute("aria-pressed", String(state.feedback.positive.has(item.id)));
      less.setAttribute("aria-pressed", String(state.feedback.negative.has(item.id)));
      more.addEventListener("click", () => giveFeedback(item.id, true));
      less.addEventListener("click", () => giveFeedback(item.id, false));
    } else {
      fbButtons.hidden = true;
    }
    const similar = node.querySelector(".find-similar");
    similar.id = `find-similar-${item.id}`;
    similar.setAttribute("aria-label", `找与图片 ${item.id} 相似的图片`);
    similar.addEventListener("click", () => searchSimilar(item.id, item.thumbnail_url));
    return node;
  }

  function appendFilterFields(form, opts, collection) {
    if (collection) form.append("collection", collection);
    form.append("top_k", String(opts.topK));
    if (opts.minScore !== null) form.append("min_score", String(opts.minScore));
    const f = opts.filters;
    if (f.sources.length) form.append("sources", f.sources.join(","));
    if (f.tags.length) form.append("tags", f.tags.join(","));
    if (f.created_from !== null) form.append("created_from", String(f.created_from));
    if (f.created_to !== null) form.append("created_to", String(f.created_to));
  }

  function textSearch() {
    const query = el.query.value.trim();
    if (!query) {
      setStatus("error", "请输入一句中文描述。");
      el.query.focus();
      return Promise.resolve();
    }
    return runSearch("text", `以文搜图：“${query}”`, (opts, collection, extra) => {
      const body = { query, top_k: opts.topK };
      if (collection) body.collection = collection;
      if (filtersActive(opts.filters)) {
        const f = {};
        if (opts.filters.sources.length) f.sources = opts.filters.sources;
        if (opts.filters.tags.length) f.tags = opts.filters.tags;
        if (opts.filters.created_from !== null) f.created_from = opts.filters.created_from;
        if (opts.filters.created_to !== null) f.created_to = opts.filters.created_to;
        body.filters = f;
      }
      if (opts.minScore !== null) body.min_score = opts.minScore;
      body.order_by = opts.orderBy;
      body.order = opts.order;
      body.cut = opts.cut;
      if (state.feedback.query !== query) resetFeedback(query);
      if (state.feedback.positive.size) body.positive_ids = [...state.feedback.positive];
      if (state.feedback.negative.size) body.negative_ids = [...state.feedback.negative];
      return api("/img/search", { method: "POST", json: body, ...extra });
    });
  }

  // ------------------------------------------------------------- feedback

  function resetFeedback(query) {
    state.feedback = { query, positive: new Set(), negative: new Set() };
    updateFeedbackBar();
  }

  /** 更像这个 / 不要这种: remember the id for this query and search again with the feedback. */
  function giveFeedback(imageId, positive) {
    const query = el.query.value.trim();
    if (state.feedback.query !== query) resetFeedback(query);
    const [add, drop] = positive
      ? [state.feedback.positive, state.feedback.negative]
      : [state.feedback.negative, state.feedback.positive];
    drop.delete(imageId);
    add.add(imageId);
    return textSearch();
  }

  function updateFeedbackBar() {
    const p = state.feedback.positive.size;
    const n = state.feedback.negative.size;
    el.feedbackBar.hidden = p + n === 0;
    el.feedbackText.textContent = `反馈：更像 ${p} 张 · 不要 ${n} 张（已从结果中排除）`;
    el.feedbackBar.dataset.positive = String(p);
    el.feedbackBar.dataset.negative = String(n);
  }

  function imageSearch(file) {
    if (!file) return Promise.resolve();
    if (state.queryObjectUrl) URL.revokeObjectURL(state.queryObjectUrl);
    const isImage = !file.type || file.type.startsWith("image/");
    state.queryObjectUrl = isImage ? URL.createObjectURL(file) : null;
    return runSearch("image", `以图搜图：${file.name || "粘贴的图片"}`, (opts, collection, extra) => {
      const form = new FormData();
      form.append("file", file, file.name || "upload");
      appendFilterFields(form, opts, collection);
      return api("/img/search/image", { method: "POST", form, ...extra });
    }, state.queryObjectUrl);
  }

  function searchSimilar(imageId, thumbUrl) {
    closeModal();
    return runSearch("similar", `找相似：图片 ${imageId}（已排除它本身）`, (opts, collection, extra) => {
      const form = new FormData();
      form.append("image_id", String(imageId));
      appendFilterFields(form, opts, collection);
      return api("/img/search/image", { method: "POST", form, ...extra });
    }, thumbUrl || null, imageId);
  }

  // ---------------------------------------------------------------- modal

  async function openModal(item, collection, opener) {
    state.modalOpener = opener || null;
    state.modalItem = { item, collection };
    el.modalTitle.textContent = `图片 ${item.id}`;
    el.modalImage.removeAttribute("src");
    if (item.width && item.height) {
      el.modalImage.width = item.width;
      el.modalImage.height = item.height;
    }
    el.modalImage.alt = `图片 ${item.id}`;
    el.modalImage.src = item.url;
    el.modalOriginal.href = item.url;
    el.modalScore.textContent = item.score !== undefined ? `第 ${item.rank} 名 · ${formatScore(item.score)}` : "";
    el.modalMeta.replaceChildren(metaRow("状态", "正在读取元数据…"));
    el.modalOcr.hidden = true;
    el.modalOcr.dataset.loaded = "false";
    el.modal.dataset.id = String(item.id);
    if (!el.modal.open) {
      if (typeof el.modal.showModal === "function") el.modal.showModal(); else el.modal.setAttribute("open", "");
    }
    el.modalClose.focus();
    try {
      const { data } = await api(`/img/images/${encodeURIComponent(collection)}/${item.id}/meta`);
      if (!state.modalItem || state.modalItem.item.id !== item.id) return;
      renderMeta(data);
    } catch (err) {
      if (!state.modalItem || state.modalItem.item.id !== item.id) return;
      el.modalMeta.replaceChildren(metaRow("错误", describeError(err).text));
    }
    loadOcr(item, collection);
  }

  // The text read in the image (OCR); a collection without OCR answers 404 and the section stays hidden.
  async function loadOcr(item, collection) {
    let data;
    try {
      ({ data } = await api(`/img/images/${encodeURIComponent(collection)}/${item.id}/ocr`, { retries: 0 }));
    } catch (err) {
      return;
    }
    if (!state.modalItem || state.modalItem.item.id !== item.id) return;
    const status = {
      ok: data.lines.length ? `识别出 ${data.lines.length} 行文字` : "没有识别出文字",
      pending: "还没有识别",
      failed: `识别失败：${data.error || ""}`,
    }[data.status];
    el.modalOcrStatus.textContent = status;
    el.modalOcrLines.replaceChildren(
      ...data.lines.map((line) => {
        const li = document.createElement("li");
        li.textContent = line.text;
        li.title = `置信度 ${Number(line.confidence).toFixed(2)}`;
        return li;
      })
    );
    el.modalOcr.hidden = false;
    el.modalOcr.dataset.loaded = "true";
  }

  function metaRow(label, value) {
    const frag = document.createDocumentFragment();
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = value;
    frag.append(dt, dd);
    return frag;
  }

  function renderMeta(m) {
    const rows = [
      ["ID", String(m.id)],
      ["集合", m.collection],
      ["来源", m.source || "—"],
      ["标签", m.tags && m.tags.length ? m.tags.join("，") : "—"],
      ["尺寸", `${m.width} × ${m.height}`],
      ["格式", m.mime],
      ["创建时间", formatTime(m.created_at)],
      ["添加时间", formatTime(m.added_at)],
      ["外部 ID", m.external_id || "—"],
      ["已建索引", m.indexed ? "是" : "否"],
      ["SHA-256", m.sha256],
    ];
    el.modalMeta.replaceChildren(...rows.map(([k, v]) => metaRow(k, v)));
    el.modalMeta.dataset.loaded = "true";
  }

  function closeModal() {
    if (!el.modal.open) return;
    if (typeof el.modal.close === "function") el.modal.close(); else el.modal.removeAttribute("open");
  }

  function onModalClosed() {
    state.modalItem = null;
    delete el.modalMeta.dataset.loaded;
    const opener = state.modalOpener;
    state.modalOpener = null;
    if (opener && document.contains(opener)) opener.focus();
  }

  // ------------------------------------------------------- loads and jobs

  /** Bring `node` into view inside the side panel (scrolls the panel, not the page, when it has its own scroll). */
  function revealInPanel(node) {
    const panel = $("jobs-panel");
    if (panel.scrollHeight > panel.clientHeight + 1 && getComputedStyle(panel).overflowY !== "visible") {
      const top = node.getBoundingClientRect().top - panel.getBoundingClientRect().top + panel.scrollTop;
      const bottom = top + node.offsetHeight;
      if (top < panel.scrollTop) panel.scrollTop = top - 8;
      else if (bottom > panel.scrollTop + panel.clientHeight) panel.scrollTop = bottom - panel.clientHeight + 8;
    } else {
      node.scrollIntoView({ block: "nearest" });
    }
  }

  function showPanelMessage(text, kind = "error") {
    el.panelMessage.textContent = text;
    el.panelMessage.dataset.kind = kind;
    el.panelMessage.hidden = !text;
    if (text) revealInPanel(el.panelMessage);
  }

  function jobLabel(job) {
    const kind = KIND_LABELS[job.kind] || job.kind;
    const what = job.kind === "load" && job.params
      ? `${(job.params.dataset_dir || "").split("/").pop()}/${job.params.split}`
      : "";
    return `${kind}${what ? " " + what : ""} → ${job.collection}`;
  }

  function renderJob(job) {
    const appearing = el.job.hidden || el.job.dataset.jobId !== job.id;
    el.job.hidden = false;
    if (appearing) revealInPanel(el.job);
    el.job.dataset.jobId = job.id;
    el.job.dataset.state = job.state;
    el.job.dataset.processed = String(job.processed);
    el.job.dataset.failed = String(job.failed);
    el.job.dataset.total = job.total === null || job.total === undefined ? "" : String(job.total);
    el.jobTitle.textContent = jobLabel(job);
    el.jobState.textContent = STATE_LABELS[job.state] || job.state;
    el.jobState.title = job.state;
    el.jobState.dataset.state = job.state;
    const done = job.processed + job.failed;
    let pct = null;
    if (job.total) pct = Math.min(100, Math.round((done / job.total) * 1000) / 10);
    else if (job.state === "succeeded") pct = 100;
    el.jobBar.classList.toggle("indeterminate", pct === null && !TERMINAL.has(job.state));
    el.jobBarFill.style.width = `${pct === null ? 0 : pct}%`;
    el.jobBar.setAttribute("aria-valuenow", String(pct === null ? 0 : pct));
    el.jobBar.dataset.state = job.state;
    el.jobCounts.textContent = `已处理 ${job.processed} / ${job.total ?? "?"} · 失败 ${job.failed}`
      + (pct !== null ? ` · ${pct}%` : "");
    const rate = job.rate_per_s ? `速度 ${job.rate_per_s} 张/秒` : "速度 —";
    const eta = TERMINAL.has(job.state)
      ? (job.finished_at && job.started_at ? `用时 ${formatDuration(job.finished_at - job.started_at)}` : "")
      : `预计剩余 ${formatDuration(job.eta_s)}`;
    el.jobRate.textContent = [rate, eta].filter(Boolean).join(" · ");
    el.jobMessage.textContent = job.message || "";
    el.jobCancel.hidden = TERMINAL.has(job.state);
    el.jobResume.hidden = !(job.state === "interrupted" || job.state === "failed");
    const failures = job.failures || [];
    el.jobFailuresBox.hidden = failures.length === 0 && job.failed === 0;
    el.jobFailuresSummary.textContent = `失败的条目（${job.failed}${failures.length < job.failed ? `，显示 ${failures.length}` : ""}）`;
    el.jobFailures.replaceChildren(...failures.map((f) => {
      const li = document.createElement("li");
      li.dataset.testid = "job-failure";
      const item = document.createElement("strong");
      item.textContent = f.item;
      li.append(item, document.createTextNode(`：${f.reason}`));
      return li;
    }));
    if (failures.length && job.state !== "running") el.jobFailuresBox.open = true;
  }

  function watchJob(jobId) {
    state.watchedJob = jobId;
    if (state.pollTimer) clearTimeout(state.pollTimer);
    const poll = async () => {
      if (state.watchedJob !== jobId) return;
      let delay = POLL_MS;
      try {
        const { data } = await api(`/img/jobs/${encodeURIComponent(jobId)}`, { retries: 0 });
        if (state.watchedJob !== jobId) return;
        renderJob(data);
        el.job.classList.remove("stale");
        if (TERMINAL.has(data.state)) {
          state.pollTimer = null;
          onJobFinished(data);
          return;
        }
      } catch (err) {
        if (state.watchedJob !== jobId) return;
        el.job.classList.add("stale");
        if (err.kind === "busy") {
          el.jobMessage.textContent = "服务繁忙，正在重试…";
          delay = 2000;
        } else if (err.kind === "network") {
          el.jobMessage.textContent = "网络错误，正在重新连接…";
          delay = 2000;
        } else {
          el.jobMessage.textContent = describeError(err).text;
          if (err.status === 404) return;
          delay = 2000;
        }
      }
      state.pollTimer = setTimeout(poll, delay);
    };
    poll();
  }

  function onJobFinished(job) {
    loadJobs();
    loadCollections(job.state === "succeeded" ? job.collection : undefined);
  }

  async function startLoad(event) {
    event.preventDefault();
    showPanelMessage("");
    el.bulkResults.hidden = true;
    const body = { dataset: el.loadDataset.value.trim(), split: el.loadSplit.value.trim() };
    const collection = el.loadCollection.value.trim() || currentCollection();
    if (collection) body.collection = collection;
    el.loadStart.disabled = true;
    try {
      const { data } = await api("/img/load", {
        method: "POST", json: body, write: true,
        onRetry: (n, wait) => showPanelMessage(`服务繁忙，正在重试…（第 ${n} 次，${Math.round(wait)} 秒后）`, "busy"),
      });
      showPanelMessage("");
      renderJob(data);
      watchJob(data.id);
      loadJobs();
    } catch (err) {
      showPanelMessage(`导入没有开始：${describeError(err).text}`);
      if (err.status === 401) { el.apiKeyBox.open = true; el.apiKey.focus(); }
    } finally {
      el.loadStart.disabled = false;
    }
  }

  async function startBulk(event) {
    event.preventDefault();
    showPanelMessage("");
    el.bulkResults.hidden = true;
    const files = Array.from(el.bulkFiles.files || []);
    if (!files.length) {
      showPanelMessage("请先选择要添加的图片文件。");
      return;
    }
    const collection = el.bulkCollection.value.trim() || currentCollection();
    if (!collection) {
      showPanelMessage("请填写目标集合。");
      return;
    }
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    form.append("source", el.bulkSource.value.trim() || "upload");
    const tags = splitList(el.bulkTags.value);
    if (tags.length) form.append("tags", tags.join(","));
    el.bulkStart.disabled = true;
    showPanelMessage(`正在上传 ${files.length} 个文件…`, "info");
    try {
      const { status, data } = await api(`/img/images/${encodeURIComponent(collection)}`, {
        method: "POST", form, write: true,
        onRetry: (n, wait) => showPanelMessage(`服务繁忙，正在重试…（第 ${n} 次，${Math.round(wait)} 秒后）`, "busy"),
      });
      showPanelMessage("");
      if (status === 202 && data.job_id) {
        showPanelMessage(`已转为后台任务（${files.length} 个文件），进度见下方。`, "info");
        watchJob(data.job_id);
        loadJobs();
      } else {
        renderBulkResults(data.results || []);
        loadCollections(collection);
      }
      el.bulkFiles.value = "";
    } catch (err) {
      showPanelMessage(`添加失败：${describeError(err).text}`);
      if (err.status === 401) { el.apiKeyBox.open = true; el.apiKey.focus(); }
    } finally {
      el.bulkStart.disabled = false;
    }
  }

  function renderBulkResults(results) {
    const count = (s) => results.filter((r) => r.status === s).length;
    const head = document.createElement("p");
    head.textContent = `已添加 ${count("added")} · 已存在 ${count("present")} · 失败 ${count("failed")}`;
    const list = document.createElement("ul");
    for (const r of results) {
      const li = document.createElement("li");
      li.dataset.testid = "bulk-result";
      li.dataset.status = r.status;
      const label = { added: "已添加", present: "已存在", failed: "失败" }[r.status] || r.status;
      li.textContent = `${r.filename}：${label}${r.id !== null && r.id !== undefined ? `（ID ${r.id}）` : ""}`
        + (r.error ? ` — ${r.error}` : "");
      list.append(li);
    }
    el.bulkResults.replaceChildren(head, list);
    el.bulkResults.hidden = false;
  }

  async function loadJobs() {
    try {
      const { data } = await api("/img/jobs?limit=10", { retries: 1 });
      if (!data.length) {
        const li = document.createElement("li");
        li.className = "muted";
        li.textContent = "还没有任务。";
        el.jobsList.replaceChildren(li);
        return;
      }
      el.jobsList.replaceChildren(...data.map((job) => {
        const li = document.createElement("li");
        const btn = document.createElement("button");
        btn.type = "button";
        btn.className = "job-item";
        btn.dataset.testid = "job-item";
        btn.dataset.jobId = job.id;
        btn.dataset.state = job.state;
        btn.id = `job-item-${job.id}`;
        const title = document.createElement("span");
        title.className = "job-item-title";
        title.textContent = jobLabel(job);
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.dataset.state = job.state;
        badge.textContent = STATE_LABELS[job.state] || job.state;
        const counts = document.createElement("span");
        counts.className = "job-item-counts";
        counts.textContent = `${job.processed}/${job.total ?? "?"}${job.failed ? ` · 失败 ${job.failed}` : ""}`
          + ` · ${formatTime(job.created_at)}`;
        btn.append(title, badge, counts);
        btn.addEventListener("click", () => { renderJob(job); watchJob(job.id); });
        li.append(btn);
        return li;
      }));
    } catch (err) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = `读取任务列表失败：${describeError(err).text}`;
      el.jobsList.replaceChildren(li);
    }
  }

  async function jobAction(action) {
    const id = state.watchedJob;
    if (!id) return;
    try {
      await api(`/img/jobs/${encodeURIComponent(id)}/${action}`, { method: "POST", write: true });
      watchJob(id);
      loadJobs();
    } catch (err) {
      showPanelMessage(`${action === "cancel" ? "取消" : "继续"}任务失败：${describeError(err).text}`);
    }
  }

  // ------------------------------------------------------------ wiring

  function setUpDropZone() {
    const zone = el.dropZone;
    zone.addEventListener("click", (e) => { if (e.target !== el.imageInput) el.imageInput.click(); });
    zone.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); el.imageInput.click(); }
    });
    el.imageInput.addEventListener("change", () => {
      const file = el.imageInput.files && el.imageInput.files[0];
      if (file) imageSearch(file);
      el.imageInput.value = "";
    });
    const stop = (e) => { e.preventDefault(); e.stopPropagation(); };
    ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => { stop(e); zone.classList.add("dragging"); }));
    ["dragleave", "dragend"].forEach((t) => zone.addEventListener(t, (e) => { stop(e); zone.classList.remove("dragging"); }));
    zone.addEventListener("drop", (e) => {
      stop(e);
      zone.classList.remove("dragging");
      const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (file) imageSearch(file);
    });
    // A file dropped anywhere else must not navigate away from the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    document.addEventListener("paste", (e) => {
      const target = e.target;
      if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
      const file = Array.from((e.clipboardData && e.clipboardData.files) || []).find((f) => f.type.startsWith("image/"));
      if (file) { e.preventDefault(); imageSearch(file); }
    });
  }

  function init() {
    el.apiKey.value = storageGet(STORE.apiKey) || "";
    if (el.apiKey.value) el.apiKeyBox.open = true;
    el.apiKey.addEventListener("input", () => storageSet(STORE.apiKey, el.apiKey.value.trim()));
    const topK = storageGet(STORE.topK);
    if (topK) el.topK.value = topK;

    el.form.addEventListener("submit", (e) => { e.preventDefault(); textSearch(); });
    el.collection.addEventListener("change", () => onCollectionChanged(true));
    el.collectionsRefresh.addEventListener("click", () => loadCollections());
    el.filtersClear.addEventListener("click", () => {
      for (const input of [el.sources, el.tags, el.from, el.to, el.minScore]) input.value = "";
      updateFiltersBadge();
    });
    for (const input of [el.sources, el.tags, el.from, el.to, el.minScore]) {
      input.addEventListener("input", updateFiltersBadge);
      input.addEventListener("change", updateFiltersBadge);
    }
    // On a phone the options start folded so the results stay in view.
    if (window.matchMedia && window.matchMedia("(max-width: 640px)").matches) el.options.open = false;
    // Enter in any option field runs the last kind of search again.
    for (const input of [el.topK, el.minScore, el.sources, el.tags, el.from, el.to]) {
      input.addEventListener("keydown", (e) => {
        if (e.key !== "Enter") return;
        e.preventDefault();
        if (state.lastSearch && !el.query.value.trim()) state.lastSearch(); else textSearch();
      });
    }
    el.statusRetry.addEventListener("click", () => { if (state.lastSearch) state.lastSearch(); });
    el.resultsMore.addEventListener("click", () => {
      for (const card of el.results.querySelectorAll(".tier-other")) card.hidden = false;
      el.resultsMore.hidden = true;
      el.resultsMore.setAttribute("aria-expanded", "true");
      el.results.dataset.hidden = "0";
    });
    el.feedbackClear.addEventListener("click", () => {
      resetFeedback(el.query.value.trim());
      if (el.query.value.trim()) textSearch();
    });
    setUpDropZone();

    el.modalClose.addEventListener("click", closeModal);
    el.modal.addEventListener("close", onModalClosed);
    el.modal.addEventListener("click", (e) => { if (e.target === el.modal) closeModal(); });
    el.modal.addEventListener("keydown", (e) => { if (e.key === "Escape") { e.preventDefault(); closeModal(); } });
    el.modalSimilar.addEventListener("click", () => {
      if (!state.modalItem) return;
      const { item } = state.modalItem;
      state.modalOpener = null;
      searchSimilar(item.id, item.thumbnail_url);
    });

    el.loadForm.addEventListener("submit", startLoad);
    el.bulkForm.addEventListener("submit", startBulk);
    el.jobsRefresh.addEventListener("click", loadJobs);
    el.jobCancel.addEventListener("click", () => jobAction("cancel"));
    el.jobResume.addEventListener("click", () => jobAction("resume"));

    // "/" focuses the search box (unless typing somewhere already).
    document.addEventListener("keydown", (e) => {
      if (e.key !== "/" || e.ctrlKey || e.metaKey || e.altKey) return;
      const t = e.target;
      if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable)) return;
      e.preventDefault();
      el.query.focus();
    });

    setStatus("idle", "输入一句中文描述，或上传一张照片开始搜索。");
    loadCollections().then(loadModels);
    loadJobs();
    document.body.dataset.ready = "true";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
