// The console's only script (the Content-Security-Policy allows no inline ones): asks before
// destructive actions, and reads a chosen file of numbers into the numbers box.
"use strict";
document.addEventListener("submit", function (event) {
  var button = event.submitter;
  var message = button && button.getAttribute("data-confirm");
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});
document.addEventListener("change", function (event) {
  var input = event.target;
  if (input.id !== "numbers-file" || !input.files || !input.files[0]) {
    return;
  }
  var reader = new FileReader();
  reader.onload = function () {
    document.getElementById("numbers-text").value = String(reader.result);
  };
  reader.readAsText(input.files[0]);
});
