// plot: dygraphs charts with a legend of our own. dygraphs' legend plugin
// writes style attributes into its HTML, which the page's
// Content-Security-Policy (default-src 'self', no inline style) refuses;
// it is left out and the legend below is built with the DOM.
import { h, num } from './dom.js';

const Dygraph = window.Dygraph;
Dygraph.PLUGINS = Dygraph.PLUGINS.filter((p) => p !== Dygraph.Plugins.Legend);

// A Dygraph in div over rows with opts; the legend (the series' names, or
// the values at the point under the mouse) goes in an element after div.
export function plot(div, rows, opts) {
  const legend = h('div', { class: 'legend', id: div.id + '-legend' });
  div.after(legend);
  let g = null;
  const names = (opts.labels || []).slice(1);
  const entry = (i, text) => {
    const s = h('span', { class: 'legend-entry' }, h('b', {}, names[i]), text);
    const colours = g ? g.getColors() : [];
    if (colours[i]) s.firstChild.style.color = colours[i];
    return s;
  };
  const idle = () => {
    delete legend.dataset.x;
    legend.replaceChildren(...names.map((_, i) => entry(i, '')));
  };
  g = new Dygraph(div, rows, Object.assign({}, opts, {
    highlightCallback: (ev, x, points) => {
      legend.dataset.x = String(x);
      legend.replaceChildren(h('span', { class: 'legend-x' }, 'step ', x),
        ...points.map((p) => entry(names.indexOf(p.name), ' ' + num(p.yval, 6))));
    },
    unhighlightCallback: idle,
  }));
  idle();
  return g;
}
