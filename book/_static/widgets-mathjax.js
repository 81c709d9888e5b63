// The widget manager (book/_static/jupyter-widgets) typesets the math in widget labels with
// MathJax 2's call, MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]). The book serves
// MathJax 3, which has no Hub: every label threw "Cannot read properties of undefined
// (reading 'Queue')" and its math stayed raw TeX. This gives MathJax 3 that one call,
// chained on MathJax.startup.promise as MathJax 3 asks. It runs on 'load' just before the
// widget manager draws the views (also on 'load'), being loaded before it (_config.yml).
window.addEventListener("load", () => {
  const mj = window.MathJax;
  if (mj && mj.startup && !mj.Hub) {
    mj.Hub = {
      Queue: ([, , element]) => {
        mj.startup.promise = mj.startup.promise.then(() => mj.typesetPromise([element]));
      },
    };
  }
});
