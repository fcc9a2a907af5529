// MesoScan's scan form: uploads with progress, the scan's stage while it runs, then its report page.
// Without this script the form still posts (the server answers with the report page, which refreshes itself).
(function () {
  "use strict";

  var form = document.getElementById("scan-form");
  if (!form || !window.fetch || !window.FormData) return;

  var KEY_STORE = "mesoscan.apiKey";
  var STAGES = {fetch: "Reading the video", analyze: "Finding and scoring faces", classify: "Scoring faces"};
  var maxBytes = Number(form.dataset.maxBytes);
  var urlInput = document.getElementById("url");
  var fileInput = document.getElementById("file");
  var modelInput = document.getElementById("model");
  var keyInput = document.getElementById("api_key");
  var forgetKey = document.getElementById("forget-key");
  var drop = document.getElementById("drop");
  var chosen = document.getElementById("chosen");
  var button = document.getElementById("scan-button");
  var errorBox = document.getElementById("form-error");
  var progressBox = document.getElementById("progress");
  var progressText = document.getElementById("progress-text");
  var progressBar = document.getElementById("progress-bar");

  function megabytes(bytes) {
    return (bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0) + " MB";
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    progressBox.hidden = true;
    button.disabled = false;
    errorBox.focus();
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
  }

  function showProgress(text, fraction) {
    progressBox.hidden = false;
    progressText.textContent = text;
    if (fraction === null) {
      progressBar.removeAttribute("value");
    } else {
      progressBar.value = Math.max(0, Math.min(1, fraction));
    }
  }

  // --- the API key (keys-on gateways): kept in this tab's session storage only ---------------------------------
  function storedKey() {
    try { return window.sessionStorage.getItem(KEY_STORE) || ""; } catch (e) { return ""; }
  }

  function storeKey(value) {
    try {
      if (value) { window.sessionStorage.setItem(KEY_STORE, value); } else { window.sessionStorage.removeItem(KEY_STORE); }
    } catch (e) { /* storage refused (private mode): the key is asked again next time */ }
  }

  if (keyInput) {
    if (storedKey()) {
      keyInput.value = storedKey();
      forgetKey.hidden = false;
    }
    forgetKey.addEventListener("click", function () {
      storeKey("");
      keyInput.value = "";
      forgetKey.hidden = true;
      keyInput.focus();
    });
  }

  function headers() {
    var h = {Accept: "application/json"};
    if (keyInput && keyInput.value.trim()) h["X-API-Key"] = keyInput.value.trim();
    return h;
  }

  // --- choosing and dropping a file ---------------------------------------------------------------------------
  function describeFile() {
    var file = fileInput && fileInput.files[0];
    chosen.textContent = file ? "Chosen: " + file.name + " (" + megabytes(file.size) + ")" : "";
    if (file && file.size > maxBytes) {
      showError("This file is " + megabytes(file.size) + ": the limit is " + megabytes(maxBytes) + ".");
    } else {
      clearError();
    }
  }

  if (fileInput && drop) {
    fileInput.addEventListener("change", describeFile);
    ["dragenter", "dragover"].forEach(function (name) {
      drop.addEventListener(name, function (event) {
        event.preventDefault();
        drop.classList.add("over");
      });
    });
    ["dragleave", "drop"].forEach(function (name) {
      drop.addEventListener(name, function () { drop.classList.remove("over"); });
    });
    drop.addEventListener("drop", function (event) {
      event.preventDefault();
      if (event.dataTransfer && event.dataTransfer.files.length) {
        fileInput.files = event.dataTransfer.files;
        describeFile();
      }
    });
  }

  // --- talking to the API -------------------------------------------------------------------------------------
  function failure(status, body) {
    var error = body && body.error;
    if (status === 401 && keyInput) {
      storeKey("");
      if (forgetKey) forgetKey.hidden = true;
    }
    return new Error(error && error.message ? error.message : "The gateway answered " + status + ".");
  }

  function requestJSON(url, options) {
    return fetch(url, options).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (body) {
        if (!response.ok) throw failure(response.status, body);
        return body;
      });
    }, function () {
      throw new Error("MesoScan could not be reached. Check your connection and try again.");
    });
  }

  function upload(file) {
    return new Promise(function (resolve, reject) {
      var data = new FormData();
      data.append("model", modelInput.value);
      data.append("file", file, file.name);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/v1/scans");
      var h = headers();
      Object.keys(h).forEach(function (name) { xhr.setRequestHeader(name, h[name]); });
      xhr.upload.addEventListener("progress", function (event) {
        if (event.lengthComputable) {
          showProgress("Uploading: " + megabytes(event.loaded) + " of " + megabytes(event.total), event.loaded / event.total);
        }
      });
      xhr.upload.addEventListener("load", function () { showProgress("Checking the file…", null); });
      xhr.addEventListener("load", function () {
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
        if (xhr.status >= 200 && xhr.status < 300 && body) { resolve(body); } else { reject(failure(xhr.status, body)); }
      });
      xhr.addEventListener("error", function () {
        reject(new Error("The upload was interrupted. Check your connection and try again."));
      });
      xhr.send(data);
    });
  }

  function follow(scan) {
    if (scan.status === "done" || scan.status === "failed") {
      showProgress(scan.status === "done" ? "Done: opening the report…" : "The scan failed: opening the report…", 1);
      window.location.assign("/scans/" + encodeURIComponent(scan.id));
      return null;
    }
    if (scan.status === "running" && scan.progress) {
      showProgress(STAGES[scan.progress.stage] + "…", scan.progress.fraction);
    } else {
      showProgress(scan.status === "running" ? "Starting…" : "Waiting for a worker…", null);
    }
    return new Promise(function (resolve) { window.setTimeout(resolve, 1000); }).then(function () {
      return requestJSON("/api/v1/scans/" + encodeURIComponent(scan.id), {headers: headers()});
    }).then(follow);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    clearError();
    var file = fileInput && fileInput.files[0];
    var url = urlInput.value.trim();
    if (!file && !url) return showError("Paste a video link or choose a video file.");
    if (file && url) return showError("Scan either a link or a file: clear one of them.");
    if (file && file.size > maxBytes) {
      return showError("This file is " + megabytes(file.size) + ": the limit is " + megabytes(maxBytes) + ".");
    }
    if (keyInput && !keyInput.value.trim()) {
      keyInput.focus();
      return showError("Enter your API key first.");
    }
    button.disabled = true;
    showProgress(file ? "Uploading…" : "Sending the link…", file ? 0 : null);
    var started = file ? upload(file) : requestJSON("/api/v1/scans", {
      method: "POST",
      headers: Object.assign({"Content-Type": "application/json"}, headers()),
      body: JSON.stringify({url: url, model: modelInput.value})
    });
    started.then(function (scan) {
      if (keyInput) {
        storeKey(keyInput.value.trim());
        forgetKey.hidden = false;
      }
      return follow(scan);
    }).catch(function (error) { showError(error.message); });
  });
})();
